"""Events of the FTP sessions sent to receivers (HTTP) and commands, at least once.

Workers write each event to the spool before the reply that acknowledges its operation
(``spool``, ``commit``, ``sink``); the events process, a child of the master, delivers them
(``deliver``, ``schedule``, ``post``, ``command``, ``deadletter``). ``precheck`` asks a
service, synchronously, whether an upload or a delete may go ahead. This package knows no FTP
and no COS: ``ftp.hooks`` turns sessions' commands into events. See docs/events.md.
"""
