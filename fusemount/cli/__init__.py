"""The `fusemount` command line: subcommands, wrappers, top (SPEC 2, 9)."""
