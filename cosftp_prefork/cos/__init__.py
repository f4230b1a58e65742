"""Everything that talks to COS, and nothing that knows FTP: the bucket client (the only
importer of qcloud_cos), the transfer engine and upload lifecycle, downloads, listings,
copies, resume, MFMT times, digests.
"""
