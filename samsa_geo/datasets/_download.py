import os.path as osp
from typing import List

from torch_geometric.data import download_url, extract_zip


def fetch_archive(url: str, root: str, folder: str, files: List[str]) -> None:
    r"""Puts the archive :obj:`url` extracted at :obj:`root/folder`.

    A zip already placed at :obj:`root` is extracted without downloading.
    If the download fails (the historical Stanford links are often
    offline), raises a :class:`RuntimeError` naming the archive and the
    exact folder to place it in.
    """
    name = url.rsplit('/', 1)[-1]
    zip_path = osp.join(root, name)
    target = osp.join(root, folder)
    how = (f"Download '{name}' by hand and either place the zip at "
           f"'{osp.abspath(zip_path)}' or extract it so that "
           f"'{osp.abspath(target)}' contains {', '.join(files)}.")
    if not osp.exists(zip_path):
        try:
            zip_path = download_url(url, root)
        except Exception as e:
            raise RuntimeError(f"Could not download '{name}' from {url} "
                               f"({type(e).__name__}: {e}). {how}") from e
    extract_zip(zip_path, root)
    missing = [f for f in files if not osp.exists(osp.join(target, f))]
    if missing:
        raise RuntimeError(f"Archive '{zip_path}' did not provide "
                           f"{', '.join(missing)} in '{target}'. {how}")
