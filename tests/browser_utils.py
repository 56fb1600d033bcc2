"""Real-browser helpers for the dashboard tests: JupyterLab on 127.0.0.1 and Debian's Chromium driven by playwright.

Nothing here downloads anything: the browser is the system one (`BEITV2_LAB_CHROMIUM`, default /usr/bin/chromium),
never `playwright install`. JupyterLab runs with its token and password disabled, which is acceptable only because
it binds to the loopback interface; every Jupyter/JupyterLab/IPython config, data, runtime, settings and workspace
folder points into a temporary folder, so the user's own settings never change what the test sees.
"""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get('BEITV2_LAB_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
REQUIRE_ENV = 'BEITV2_LAB_REQUIRE_BROWSER'      # set (CI does): a missing browser fails instead of skipping
ARTIFACTS_ENV = 'BEITV2_LAB_ARTIFACTS'          # where screenshots go (default tests/artifacts/)
TESTS_DIR = Path(__file__).resolve().parent

# JupyterLab user settings written into the temporary settings dir: no news / update prompts, and every cell kept in
# the DOM (no windowing) so that prompts and outputs of all cells can be read.
LAB_SETTINGS = {
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False},
    '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},
    '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': {'autosave': False},
}
SERVER_CONFIG = {'LabApp': {'news_url': None, 'check_for_updates_class': 'jupyterlab.NeverCheckForUpdate'},
                 'ServerApp': {'terminals_enabled': False}}


# ---------------------------------------------------------------------------------------------------------- setup
def missing_browser() -> str | None:
    "Why a real-browser test cannot run here, or None when Chromium and playwright are both available."
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f'no Chromium executable at {CHROMIUM} (apt-get install chromium, or set BEITV2_LAB_CHROMIUM)'
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return 'the python package `playwright` is not installed (pip install playwright)'
    return None


def require_browser():
    "Skip with the reason when the browser is missing, unless `BEITV2_LAB_REQUIRE_BROWSER` is set: then fail."
    reason = missing_browser()
    if reason is None: return
    if os.environ.get(REQUIRE_ENV): pytest.fail(f'{REQUIRE_ENV} is set but {reason}', pytrace=False)
    pytest.skip(reason)


def artifacts_root() -> Path:
    "`$BEITV2_LAB_ARTIFACTS`, default tests/artifacts/ (git-ignored); created."
    d = Path(os.environ.get(ARTIFACTS_ENV) or TESTS_DIR/'artifacts')
    d.mkdir(parents=True, exist_ok=True)
    return d


def artifacts_dir(name: str) -> Path:
    "The folder for one test's screenshots, `artifacts_root()/name`, emptied of an earlier run's pictures."
    d = artifacts_root()/name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob('*.png'): f.unlink()                      # no stale picture from an earlier run
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> Path:
    "Write a python3 notebook (nbformat 4.5) of code cells; a cell starting with `#%% md` becomes markdown."
    def cell(i, src):
        if src.startswith('#%% md'): return {'cell_type': 'markdown', 'id': f'c{i}', 'metadata': {},
                                             'source': src.removeprefix('#%% md').strip()}
        return {'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'execution_count': None, 'outputs': [],
                'source': src.strip()}
    nb = {'nbformat': 4, 'nbformat_minor': 5, 'cells': [cell(i, c) for i, c in enumerate(cells)],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                       'language_info': {'name': 'python'}}}
    Path(path).write_text(json.dumps(nb, indent=1))
    return Path(path)


def parameterize(src: Path, dst: Path, **params) -> Path:
    "Copy the notebook `src` to `dst` with papermill's injected-parameters cell (as `papermill -p` would)."
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    nbformat.write(parameterize_notebook(load_notebook_node(str(src)), params), str(dst))
    return Path(dst)


# ------------------------------------------------------------------------------------------------------ the server
def _children(pid: int) -> list[int]:
    "All descendants of `pid` (Linux /proc; empty elsewhere)."
    parents = {}
    for p in Path('/proc').glob('[0-9]*'):
        try: parents[int(p.name)] = int((p/'stat').read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError): pass
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        out += kids; todo += kids
    return out


class JupyterLab:
    "JupyterLab serving `root` on 127.0.0.1 with an isolated configuration; `stop()` ends it and its kernels."
    def __init__(self, root: Path, home: Path, log: Path | None = None, timeout: float = 90):
        self.root, self.home, self.port = Path(root), Path(home), free_port()
        self.url, self.log = f'http://127.0.0.1:{self.port}', Path(log or self.home/'jupyterlab.log')
        self.proc, self.timeout = None, timeout

    def env(self) -> dict:
        dirs = {k: self.home/v for k, v in [('JUPYTER_CONFIG_DIR', 'config'), ('JUPYTER_DATA_DIR', 'data'),
                ('JUPYTER_RUNTIME_DIR', 'runtime'), ('IPYTHONDIR', 'ipython'), ('JUPYTERLAB_SETTINGS_DIR', 'settings'),
                ('JUPYTERLAB_WORKSPACES_DIR', 'workspaces')]}
        for d in dirs.values(): d.mkdir(parents=True, exist_ok=True)
        for name, value in LAB_SETTINGS.items():
            f = dirs['JUPYTERLAB_SETTINGS_DIR']/name; f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        (dirs['JUPYTER_CONFIG_DIR']/'jupyter_server_config.json').write_text(json.dumps(SERVER_CONFIG))
        env = {k: v for k, v in os.environ.items() if not k.startswith(('JUPYTER', 'IPYTHON'))}
        return {**env, **{k: str(v) for k, v in dirs.items()}, 'JUPYTER_PLATFORM_DIRS': '1', 'PYTHONUNBUFFERED': '1'}

    def start(self) -> 'JupyterLab':
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', f'--ServerApp.port={self.port}',
               '--ServerApp.port_retries=0', '--ServerApp.ip=127.0.0.1', '--IdentityProvider.token=',
               '--ServerApp.password=', '--ServerApp.open_browser=False', f'--ServerApp.root_dir={self.root}',
               f'--LabApp.user_settings_dir={self.home/"settings"}', f'--LabApp.workspaces_dir={self.home/"workspaces"}']
        if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
        env = self.env()
        self._logf = open(self.log, 'wb')
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f'JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}')
            try:
                with urllib.request.urlopen(f'{self.url}/api/status', timeout=2) as r:
                    if r.status == 200: return self
            except OSError: time.sleep(0.3)
        raise TimeoutError(f'JupyterLab did not answer on {self.url} within {self.timeout} s:\n{self.log_tail()}')

    def api(self, path: str, method: str = 'GET'):
        req = urllib.request.Request(f'{self.url}/api/{path}', method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
        return json.loads(body) if body else None

    def kernels(self) -> list[dict]: return self.api('kernels')

    def log_tail(self, n: int = 4000) -> str:
        try: return self.log.read_text(errors='replace')[-n:]
        except OSError: return ''

    def stop(self):
        "Shut kernels down through the API, then end the server's process group and anything it left behind."
        if self.proc is None: return
        if self.proc.poll() is None:
            try:
                for k in self.kernels(): self.api(f'kernels/{k["id"]}', 'DELETE')
            except OSError: pass
        kids = _children(self.proc.pid)                            # kernels run in their own sessions
        for sig, wait in [(signal.SIGTERM, 10), (signal.SIGKILL, 5)]:
            for pid in [self.proc.pid, *kids]:
                try: os.killpg(pid, sig) if pid == self.proc.pid else os.kill(pid, sig)
                except (ProcessLookupError, PermissionError): pass
            try: self.proc.wait(wait); break
            except subprocess.TimeoutExpired: pass
        for pid in kids:                                           # stragglers (kernels ignoring SIGTERM)
            try: os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError): pass
        self._logf.close()
        self.proc = None


# ----------------------------------------------------------------------------------------------------- the browser
def launch_chromium(playwright, **kwargs):
    "Debian's Chromium, headless, with no network-reaching background services."
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, **kwargs)


# The rendered content of an element: sha-256 of the bytes behind each <img> (itself or inside) and its text.
_SIGNATURE_JS = """async (el) => {
  const imgs = el.tagName === 'IMG' ? [el] : Array.from(el.querySelectorAll('img'));
  const hashes = [];
  for (const img of imgs) {
    try { await img.decode(); } catch (e) {}
    const buf = await (await fetch(img.src)).arrayBuffer();
    const h = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
    hashes.push(Array.from(h).map(b => b.toString(16).padStart(2, '0')).join('') + ':' + img.naturalWidth + 'x' + img.naturalHeight);
  }
  return {imgs: hashes, text: el.innerText || ''};
}"""


class LabNotebook:
    "One notebook opened in JupyterLab in a playwright page: run all, wait for the kernel, find and drive widgets."
    def __init__(self, page, lab: JupyterLab, name: str, artifacts: Path | None = None):
        self.page, self.lab, self.name, self.artifacts = page, lab, name, artifacts
        self.console = []
        page.on('console', lambda m: self.console.append(f'{m.type}: {m.text}') if m.type in ('error', 'warning') else None)
        page.on('pageerror', lambda e: self.console.append(f'pageerror: {e}'))

    def open(self, timeout: float = 60) -> 'LabNotebook':
        self.page.goto(f'{self.lab.url}/lab/tree/{self.name}', wait_until='domcontentloaded')
        self.page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').first.wait_for(timeout=timeout*1000)
        self.wait_kernel_idle(timeout)
        return self

    # -- kernel state, read from the server (independent of how the UI shows it)
    def kernel_state(self) -> str:
        try: ks = self.lab.kernels()
        except urllib.error.HTTPError as e:                    # jupyter_server lists a kernel it is still starting before
            if e.code != 500: raise                            # that start sets its last_activity: a passing 500
            return 'starting (GET /api/kernels: HTTP 500)'     # (jupyter-server/enterprise_gateway#1395)
        return ks[0]['execution_state'] if len(ks) == 1 else f'{len(ks)} kernels'

    def wait_kernel_idle(self, timeout: float = 60, settle: float = 0.6):
        "Wait until the (single) kernel reports idle for `settle` seconds in a row."
        t0, since = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            if self.kernel_state() == 'idle':
                since = since or time.monotonic()
                if time.monotonic() - since >= settle: return
            else: since = None
            time.sleep(0.2)
        raise TimeoutError(f'kernel not idle after {timeout} s (state {self.kernel_state()!r})\n{self.diagnose()}')

    # -- cells
    def prompts(self) -> list[str]:
        return [t.strip() for t in self.page.locator('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt').all_inner_texts()]

    def errors(self) -> list[str]:
        "Text of error / stderr outputs (tracebacks render as stderr in JupyterLab)."
        return self.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()

    def diagnose(self) -> str:
        return (f'prompts: {self.prompts()}\nstderr outputs:\n' + '\n---\n'.join(e[-1500:] for e in self.errors())
                + '\nbrowser console:\n' + '\n'.join(self.console[-20:]) + f'\nserver log:\n{self.lab.log_tail(1500)}')

    def menu(self, *path: str):
        "Click through the main menu bar, e.g. menu('Run', 'Run All Cells')."
        self.page.locator('.lm-MenuBar-itemLabel', has_text=path[0]).first.click()
        for label in path[1:]:
            self.page.locator('.lm-Menu:visible .lm-Menu-itemLabel').get_by_text(label, exact=True).first.click()

    def run_all(self, timeout: float = 120):
        "Run > Run All Cells, then wait until every code cell has an execution count and the kernel is idle."
        self.page.locator('.jp-NotebookPanel .jp-Notebook').first.click(position={'x': 5, 'y': 5})
        self.menu('Run', 'Run All Cells')
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            ps = self.prompts()
            if ps and all(p.strip('[]:').isdigit() for p in ps): break
            if time.monotonic() - t0 > 5 and not any('*' in p for p in ps) and self.kernel_state() == 'idle':
                break                                              # Run All stopped early (an error): reported below
            time.sleep(0.3)
        else: raise TimeoutError(f'cells still running after {timeout} s\n{self.diagnose()}')
        self.wait_kernel_idle(timeout)
        assert not any('Traceback' in e for e in self.errors()), f'a cell raised\n{self.diagnose()}'
        assert all(p.strip('[]:').isdigit() for p in self.prompts()), f'not every cell ran\n{self.diagnose()}'

    # -- widgets
    def widget(self, css_class: str, timeout: float = 30):
        "The one rendered element carrying `css_class` (as given by `widget.add_class`)."
        loc = self.page.locator(f'.jp-OutputArea .{css_class}')
        loc.first.wait_for(state='visible', timeout=timeout*1000)
        n = loc.count()
        assert n == 1, f'expected one element with class {css_class!r}, found {n}'
        return loc.first

    def signature(self, loc) -> dict:
        "What `loc` renders: hashes of its images' bytes, its text and a hash of its screenshot."
        sig = loc.evaluate(_SIGNATURE_JS)
        sig['pixels'] = hashlib.sha256(loc.screenshot(animations='disabled')).hexdigest()
        return sig

    @staticmethod
    def content(sig: dict) -> tuple:
        "The part of a signature that does not depend on scrolling (screenshots of a scaled <img> can differ by a\
        sub-pixel scroll offset): the image bytes and the text."
        return sig['imgs'], sig['text']

    def stable_signature(self, loc, pause: float = 0.5) -> dict:
        "The signature, checked to be the same twice in a row and to include a picture (else a change means nothing)."
        a = self.signature(loc); time.sleep(pause); b = self.signature(loc)
        assert self.content(a) == self.content(b), f'the view changes on its own: {a} vs {b}'
        assert a['imgs'], 'the view holds no <img> to compare'
        return a

    def wait_changed(self, loc, before: dict, timeout: float = 60) -> dict:
        "Wait until the images behind `loc` differ from `before`, let the kernel settle, return the final signature."
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if loc.evaluate(_SIGNATURE_JS)['imgs'] != before['imgs']: break
            time.sleep(0.3)
        else: raise AssertionError(f'the view did not change within {timeout} s\n{self.diagnose()}')
        self.wait_kernel_idle(timeout)
        time.sleep(0.3)
        return self.stable_signature(loc)

    def read_int(self, loc) -> int:
        "The integer a control shows: its <input>'s value, a slider's readout, or the first integer in its text."
        inp, readout = loc.locator('input'), loc.locator('.widget-readout')
        if loc.evaluate('e => e.tagName') == 'INPUT': text = loc.input_value()
        elif inp.count(): text = inp.first.input_value()
        elif readout.count(): text = readout.first.inner_text()
        else: text = loc.inner_text()
        m = re.search(r'-?\d+', text)
        assert m, f'no integer shown by the control: {text!r}'
        return int(m.group())

    @staticmethod
    def _label(text: str) -> str: return text.replace('\xa0', ' ').strip()   # ipywidgets shows spaces as &nbsp;

    def options(self, loc) -> list[str]:
        "The option labels of an ipywidgets Dropdown (its <select>), in order, as its python `options` spell them."
        return [self._label(t) for t in loc.locator('select').first.evaluate('s => Array.from(s.options, o => o.text)')]

    def selected(self, loc) -> str:
        "The label of a Dropdown's selected option ('' when none)."
        return self._label(loc.locator('select').first.evaluate('s => s.selectedIndex < 0 ? "" : s.options[s.selectedIndex].text'))

    def select_option(self, loc, label: str):
        "Pick the option `label` of an ipywidgets Dropdown from its <select>, as a user would."
        labels = self.options(loc)
        assert label in labels, f'no option {label!r} in the dropdown: {labels}'
        loc.locator('select').first.select_option(index=labels.index(label))

    def set_int(self, loc, value: int):
        "Type `value` into an IntText/BoundedIntText (or a slider's readout) and press Enter."
        box = loc.locator('input').first if loc.locator('input').count() else loc.locator('.widget-readout').first
        box.click(); box.press('Control+a'); box.type(str(value)); box.press('Enter')

    def nudge_slider(self, loc, key: str = 'ArrowRight', times: int = 1):
        "Move a slider with the keyboard, as a user would after clicking its handle."
        handle = loc.locator('.noUi-handle').first
        handle.focus()
        for _ in range(times): handle.press(key)

    def screenshot(self, name: str, loc=None):
        "Save a screenshot of the page (or of `loc`) as `<artifacts>/<name>.png`."
        if self.artifacts is None: return None
        path = self.artifacts/f'{name}.png'
        (loc or self.page).screenshot(path=str(path), animations='disabled')
        return path
