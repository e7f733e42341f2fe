"""tether's command line: thin click commands that parse, call the core, and render (a rich table or --json)."""
