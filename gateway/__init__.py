"""The HTTP gateway: auth, SQL analysis and rewrite, execution, disclosure control, the CLI."""
