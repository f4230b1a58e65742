"""The file transfer commands of the control handler: STOR and APPE (a resume after REST,
pre-upload checks), RETR from REST's offset in one GET, ALLO's announced size; STOU is not
served."""

from __future__ import annotations

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.utils import strerror

from ..errors import ResumeRefused
from . import compat


class TransferCommands:
    """Mixin for the control handler: see the module docstring."""

    def ftp_STOR(self, file: str, mode: str = "w"):
        """STOR and APPE; after ``REST n``, continue the parked upload or the stored file
        that ends at byte n (``CosFS.open_resume``), or refuse with 554. An upload still
        waiting for its data connection is given up first: pyftpdlib would drop it."""
        self._drop_queued_transfers()
        offset = compat.take_restart_position(self)
        refusal = self.hooks.check_upload(file, offset, "a" in mode, self.fs.announced)
        if refusal is not None:
            self.respond(refusal)
            return None
        if not offset or "a" in mode:
            return super().ftp_STOR(file, mode)
        upload = self._open_at(self.fs.open_resume, file, offset)
        if upload is None:
            return None
        self._receive_into(upload)
        return file

    def _receive_into(self, upload) -> None:
        """What pyftpdlib's ``ftp_STOR`` does once its file is open: receive into
        ``upload`` now (125) if the data connection is open, else once it is (150)."""
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(compat.transfer_type(self), "STOR")
        else:
            self.respond("150 File status okay. About to open data connection.")
            compat.queue_transfer(self, upload, "STOR")

    def ftp_APPE(self, file: str):
        """APPE after REST is refused, as pyftpdlib does, and uses the REST up as any
        transfer command does: pyftpdlib kept it, and the session's next STOR became a
        resume at that offset (554 for a new file)."""
        if compat.take_restart_position(self):
            self.respond("450 Can't APPE while REST request is pending.")
            return None
        return self.ftp_STOR(file, mode="a")

    def ftp_RETR(self, file: str):
        """RETR in one GET, from the offset REST set (``CosFS.open_download``): its answer
        carries what a HEAD would have told (size, ETag). 554 for an offset past the end, as
        pyftpdlib answers; 550 for a directory or nothing there."""
        self._drop_queued_transfers()
        reader = self._open_at(self.fs.open_download, file,
                               compat.take_restart_position(self))
        if reader is None:
            return None
        producer = compat.FileProducer(reader, compat.transfer_type(self))
        self.push_dtp_data(producer, isproducer=True, file=reader, cmd="RETR")
        return file

    def _open_at(self, open_file, file: str, offset: int):
        """``open_file(file, offset)``, or None once the refusal is answered: 554 for an
        offset REST cannot go to (in TYPE A too: REST is refused there, but a TYPE A after
        it resumed at a byte offset the client counted on converted line ends, as vsftpd
        refuses), 550 otherwise."""
        if offset and compat.transfer_type(self) == "a":
            self.respond("554 Cannot resume in ASCII mode (TYPE A); send TYPE I, then REST.")
            return None
        try:
            return self.run_as_current_user(open_file, file, offset)
        except ResumeRefused as exc:
            self.respond(f"554 {exc.strerror}.")
        except (OSError, FilesystemError) as exc:
            self.respond(f"550 {strerror(exc)}.")
        return None

    def ftp_ALLO(self, line: str) -> None:
        """``ALLO size``: the next upload's parts are sized for ``size`` bytes; a size over
        ``single_file_max_size`` is refused at once (552) rather than after the transfer."""
        size = line.split()[0] if line.split() else ""
        if not size.isdigit():
            self.respond("501 Syntax: ALLO <SP> bytes.")
            return
        limit = self.config.transfer.single_file_max_size
        if int(size) > limit:
            self.respond(f"552 Files are limited to {limit} bytes (single_file_max_size).")
            return
        self.fs.announce(int(size))
        self.respond("200 ALLO accepted: uploads stream, no storage to allocate.")

    def ftp_STOU(self, line: str):
        self.respond("502 STOU is not supported by this server.")

