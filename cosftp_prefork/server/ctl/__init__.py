"""``cosftpctl``'s commands, a module per family; ``server.cli`` parses the command line and
runs them."""
