"""Everything that knows pyftpdlib: control and data handlers, the filesystem view of a bucket,
FTPS, passive listener, PROXY header, client dialect, operator logs.
"""
