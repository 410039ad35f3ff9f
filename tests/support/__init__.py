"""What tests in every package share: ports, waits, a database that can go away, publishing."""
