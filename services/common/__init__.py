"""What every service shares: settings, database, schemas, prompts, errors, logging, metrics, auth."""
