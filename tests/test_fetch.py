"""`beitv2_lab.data.fetch` against a local, Range-capable HTTP server on 127.0.0.1 (no real network)."""
import hashlib, io, tarfile, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from beitv2_lab.data import ImageFolder, fetch


class Handler(BaseHTTPRequestHandler):
    "Serves `files` (path → bytes); honours `Range: bytes=N-` unless `ranges` is False; records Range headers."
    files, ranges, seen = {}, True, []

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None: return self.send_error(404)
        rng = self.headers.get('Range')
        self.seen.append(rng)
        start = int(rng.removeprefix('bytes=').split('-')[0]) if rng and self.ranges else 0
        if start >= len(data) and rng and self.ranges:
            self.send_response(416); self.send_header('Content-Range', f'bytes */{len(data)}'); self.end_headers(); return
        self.send_response(206 if start else 200)
        if start: self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.send_header('Content-Length', str(len(data) - start)); self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args): pass


@pytest.fixture
def server():
    Handler.files, Handler.ranges, Handler.seen = {}, True, []
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True); t.start()
    yield Handler, f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close(); t.join(5)


@pytest.fixture
def archive():
    "A .tgz of 6 noise JPEGs in two class folders, wrapped in a top folder 'pics/' (like imagenette2-320.tgz)."
    buf, rng = io.BytesIO(), np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode='w:gz') as tf:
        for i in range(6):
            b = io.BytesIO(); Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(b, 'JPEG')
            info = tarfile.TarInfo(f'pics/{"ab"[i % 2]}/{i}.jpg'); info.size = b.tell(); b.seek(0)
            tf.addfile(info, b)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def test_full_download(server, archive, tmp_path):
    h, base = server; data, sha = archive
    h.files['/pics.tgz'] = data
    out = fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, progress=False)
    assert out == tmp_path/'pics'                        # the doubled pics/pics level is lifted
    assert (tmp_path/'pics.tgz').read_bytes() == data and not (tmp_path/'pics.tgz.part').exists()
    ds = ImageFolder(out)
    assert (len(ds), ds.classes) == (6, ['a', 'b'])
    assert ds[0]['image'].size == (64, 48)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []   # no temporaries left
    n = len(h.seen)
    assert fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, progress=False) == out and len(h.seen) == n  # idempotent
    assert fetch(f'{base}/pics.tgz', tmp_path, extract=False, progress=False) == tmp_path/'pics.tgz'


def test_resume(server, archive, tmp_path):
    h, base = server; data, sha = archive
    h.files['/pics.tgz'] = data
    half = len(data) // 2
    (tmp_path/'pics.tgz.part').write_bytes(data[:half])
    out = fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, chunk_size=1000, progress=False)
    assert h.seen == [f'bytes={half}-']                  # only the missing half was asked for
    assert (tmp_path/'pics.tgz').read_bytes() == data
    assert len(ImageFolder(out)) == 6


def test_complete_part_is_not_downloaded_again(server, archive, tmp_path):
    h, base = server; data, sha = archive
    h.files['/pics.tgz'] = data
    (tmp_path/'pics.tgz.part').write_bytes(data)          # crash between the last byte and the rename
    fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, progress=False)
    assert h.seen == [f'bytes={len(data)}-'] and (tmp_path/'pics.tgz').read_bytes() == data


def test_checksum_mismatch(server, archive, tmp_path):
    h, base = server; data, sha = archive
    h.files['/pics.tgz'] = data
    with pytest.raises(ValueError, match='sha256 mismatch'):
        fetch(f'{base}/pics.tgz', tmp_path, sha256='0' * 64, progress=False)
    assert list(tmp_path.iterdir()) == []                 # no file, no .part, no extracted folder
    assert fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, progress=False).is_dir()   # a later good call works


def test_server_without_range(server, archive, tmp_path):
    h, base = server; data, sha = archive
    h.files['/pics.tgz'], h.ranges = data, False
    (tmp_path/'pics.tgz.part').write_bytes(b'junk' * 100)   # stale part: must be replaced, not appended to
    out = fetch(f'{base}/pics.tgz', tmp_path, sha256=sha, progress=False)
    assert h.seen == ['bytes=400-'] and (tmp_path/'pics.tgz').read_bytes() == data
    assert len(ImageFolder(out)) == 6


def test_http_error_and_plain_file(server, tmp_path):
    h, base = server
    with pytest.raises(Exception, match='404'): fetch(f'{base}/missing.tgz', tmp_path, progress=False)
    h.files['/weights.bin'] = b'\x00' * 5000
    out = fetch(f'{base}/weights.bin', tmp_path, progress=False)   # not an archive: the file itself
    assert out == tmp_path/'weights.bin' and out.read_bytes() == b'\x00' * 5000
