import os
import os.path as osp
import shutil
import zipfile
import zlib
from typing import Collection, List, Optional

from torch_geometric.data import download_url

from samsa_geo.io import DamagedFileError

# What zipfile raises on a truncated or corrupted archive: BadZipFile (no
# central directory, bad CRC), zlib.error (a broken deflate stream), EOFError
# (a member cut short), OSError (a seek past the end of the file).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def archive_name(url: str) -> str:
    r"""The file name of the archive at :obj:`url` (without a query)."""
    return url.rsplit('/', 1)[-1].split('?')[0]


def download_archive(url: str, root: str, name: str) -> str:
    r"""Downloads :obj:`url` to :obj:`root/name` and returns that path.

    The bytes go to :obj:`root/name.part`, renamed to :obj:`name` only once
    the download has finished, so an interrupted download never leaves a
    file that a later run would take for the archive. A :obj:`.part` file
    left by a killed run is deleted first.
    """
    path = osp.join(root, name)
    part = path + '.part'
    os.makedirs(root, exist_ok=True)
    if osp.exists(part):
        os.remove(part)
    try:
        download_url(url, root, filename=osp.basename(part))
        os.replace(part, path)
    except BaseException:
        if osp.exists(part):
            os.remove(part)
        raise
    return path


def check_archive(path: str) -> None:
    r"""Reads every member of the zip archive :obj:`path` to its end, which
    checks its CRC-32.

    Raises:
        DamagedFileError: Naming :obj:`path`, the member and the cause, if
            the archive is truncated or corrupted.
    """
    member = None
    with open(path, 'rb') as raw:  # an unreadable path is no damage
        try:
            with zipfile.ZipFile(raw) as archive:
                for info in archive.infolist():
                    member = info.filename
                    with archive.open(info) as f:
                        while f.read(1 << 20):
                            pass
        except _ZIP_ERRORS as e:
            where = '' if member is None else f" (member '{member}')"
            cause = ('zlib.error' if isinstance(e, zlib.error) else
                     type(e).__name__)
            raise DamagedFileError(
                f"Cannot read the zip archive '{path}'{where}: "
                f"{cause}: {e}; the archive is truncated or "
                f"corrupted") from e


def _move_into(src: str, dst: str, last: Collection[str] = ()) -> None:
    # Moves the tree src into the folder dst, replacing files of the same
    # name and keeping dst's other files; the entries named in last move
    # last, so that an interruption leaves them missing.
    for entry in sorted(os.listdir(src), key=lambda e: (e in last, e)):
        source, target = osp.join(src, entry), osp.join(dst, entry)
        if osp.isdir(source) and osp.isdir(target):
            _move_into(source, target)
        else:
            if osp.isdir(target):
                shutil.rmtree(target)
            os.replace(source, target)


def extract_archive(path: str, folder: str, target: str,
                    files: Collection[str] = ()) -> None:
    r"""Extracts the folder :obj:`folder` of the zip archive :obj:`path` to
    :obj:`target`.

    The archive is extracted into a temporary folder next to :obj:`target`
    first, and moved into place only once every member was written, so a
    failed extraction (a damaged member, a full disk) leaves nothing that a
    later run would read. An existing :obj:`target` keeps the files that the
    archive does not hold; the archive's :obj:`files` are moved in last.

    Raises:
        RuntimeError: If the archive holds no folder :obj:`folder`.
    """
    parent = osp.dirname(osp.abspath(target))
    tmp = osp.join(parent, f'.{osp.basename(target)}.extracting')
    if osp.exists(tmp):  # left by a killed run
        shutil.rmtree(tmp)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        source = osp.join(tmp, folder)
        if not osp.isdir(source):
            raise RuntimeError(
                f"Expected the archive '{path}' to hold the folder "
                f"'{folder}/' (it holds {sorted(os.listdir(tmp))})")
        if osp.isdir(target) and os.listdir(target):
            _move_into(source, target, files)
        else:
            if osp.isdir(target):
                os.rmdir(target)
            os.replace(source, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_archive(url: str, root: str, folder: str, files: List[str],
                  target: Optional[str] = None, how: Optional[str] = None,
                  keep_archive: bool = True) -> None:
    r"""Puts the folder :obj:`folder` of the zip archive at :obj:`url` at
    :obj:`target` (default :obj:`root/folder`) and checks that it then
    holds :obj:`files`.

    A zip already placed at :obj:`root` is used without downloading. The
    download goes through a :obj:`.part` file renamed once complete, every
    member is read (CRC checked) before anything is extracted, and the
    extraction goes through a temporary folder
    (:func:`extract_archive`).

    Args:
        url (str): Address of the archive.
        root (str): Folder of the zip.
        folder (str): Folder inside the archive.
        files (list): Names that :obj:`target` must hold afterwards.
        target (str, optional): Where :obj:`folder` goes.
            (default: :obj:`root/folder`)
        how (str, optional): What to do by hand, appended to every error.
            (default: place the zip at :obj:`root` or extract it there)
        keep_archive (bool, optional): Keep the zip once extracted.
            (default: :obj:`True`)

    Raises:
        RuntimeError: If the download fails (the historical Stanford links
            are often offline), naming the archive and the folder to fill.
        DamagedFileError: If the zip is truncated or corrupted. A zip that
            this call downloaded is deleted (the next run downloads it
            again); a zip found at :obj:`root` is kept and the error says to
            delete or replace it.
    """
    name = archive_name(url)
    zip_path = osp.join(root, name)
    target = osp.join(root, folder) if target is None else target
    if how is None:
        how = (f"Download '{name}' by hand and either place the zip at "
               f"'{osp.abspath(zip_path)}' or extract it so that "
               f"'{osp.abspath(target)}' contains {', '.join(files)}.")
    downloaded = False
    if not osp.exists(zip_path):
        try:
            download_archive(url, root, name)
        except Exception as e:
            raise RuntimeError(f"Could not download '{name}' from {url} "
                               f"({type(e).__name__}: {e}). {how}") from e
        downloaded = True
    try:
        check_archive(zip_path)
    except DamagedFileError as e:
        if downloaded:
            os.remove(zip_path)
            advice = (f"It was just downloaded from {url} and has been "
                      f"deleted: run again to download it anew. If this "
                      f"repeats, {how[0].lower()}{how[1:]}")
        else:
            advice = (f"It was not downloaded by this run (it was placed "
                      f"there by hand or left by an earlier version): delete "
                      f"'{osp.abspath(zip_path)}' so that the next run "
                      f"downloads it again, or replace it with an intact "
                      f"copy. {how}")
        raise DamagedFileError(f"{e}. {advice}") from e.__cause__
    try:
        extract_archive(zip_path, folder, target, files)
    except RuntimeError as e:
        raise RuntimeError(f"{e}. {how}") from e
    missing = [f for f in files if not osp.exists(osp.join(target, f))]
    if missing:
        raise RuntimeError(f"Archive '{zip_path}' did not provide "
                           f"{', '.join(missing)} in '{target}'. {how}")
    if not keep_archive:
        os.remove(zip_path)
