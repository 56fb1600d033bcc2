"""Build the documentation site from the notebooks: `python docs/build.py` writes `_site/`.

Every notebook in nbs/ is a page, rendered as it is stored (no execution; the notebooks carry no outputs):
- `nbs/index.ipynb` (the README's source) is the home page;
- a module notebook (`#| default_exp name`) gives its prose, the API of each exported cell (signature, docstring,
  the docments of every parameter as a table, the source folded away) and its examples and tests as code;
- a run notebook (a papermill template) gives its prose and code, its `parameters` cell replaced by a table of its
  config dataclass (field, type, default, the comment after the field).
The guides in docs/guides/ are pages too. Links are written the way they work on GitHub (relative to the file) and
rewritten to the pages; `beitv2_lab.module.name` in backticks links to its API entry. The pages go to `_site_src/`
and MkDocs (Material theme) renders them in strict mode: an image, a link or an anchor that leads nowhere fails the
build.
"""
from __future__ import annotations

import argparse
import ast
import configparser
import dataclasses
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import latex2mathml.converter
from fastcore.docments import docments
from mkdocs.commands.build import build as mkdocs_build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
NBS = REPO/'nbs'
GUIDES = ['architecture', 'scaling-out', 'dashboards', 'comparison', 'learning-curves', 'performance', 'developing']   # nav order; others follow by name
RUNS = ['train_vqkd', 'pretrain_mim', 'train_dvae', 'pretrain_ibot', 'compare_targets', 'eval', 'codebook_gallery', 'inspect_model',
        'train_pixdec']
HTML_TAGS = 'a|b|i|em|strong|code|pre|kbd|sub|sup|br|hr|img|div|span|p|details|summary|table|thead|tbody|tr|td|th|math'


def settings() -> dict:
    "The `[DEFAULT]` section of settings.ini (lib_name, git_url, branch, ...)."
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(REPO/'settings.ini')
    return dict(cp['DEFAULT'])


# ------------------------------------------------------------------------------------------------- notebook cells
def read_cells(nb: Path) -> list[dict]:
    "The cells of notebook `nb`, each with its source as one string."
    cells = json.loads(nb.read_text())['cells']
    return [{**c, 'source': ''.join(c['source']) if isinstance(c['source'], list) else c['source']} for c in cells]


def directives(src: str) -> tuple[dict, str]:
    "nbdev's `#| name args` lines at the top of a code cell, as {name: args}, and the code below them."
    lines, out, i = src.splitlines(), {}, 0
    while i < len(lines) and (lines[i].startswith('#|') or not lines[i].strip()):
        if lines[i].startswith('#|'):
            name, *args = lines[i][2:].split() or ['']
            out[name] = args
        i += 1
    return out, '\n'.join(lines[i:])


def title_of(cells: list[dict], nb: Path) -> str:
    "The notebook's H1 title."
    for c in cells:
        if c['cell_type'] == 'markdown':
            for line in c['source'].splitlines():
                if line.startswith('# '): return line[2:].strip()
    raise ValueError(f'{nb}: no H1 title; start the notebook with a markdown cell `# Title`')


def default_exp(cells: list[dict]) -> str:
    "The module a notebook exports to ('' for a notebook that exports nothing)."
    for c in cells:
        if c['cell_type'] == 'code' and 'default_exp' in (d := directives(c['source'])[0]): return d['default_exp'][0]
    return ''


# ---------------------------------------------------------------------------------------------------- the pages
@dataclasses.dataclass
class Page:
    src: Path             # the notebook or guide it is made from
    out: str              # its file in the site's sources, e.g. 'api/core.md'
    title: str
    kind: str             # 'home', 'guide', 'run' or 'module'
    module: str = ''      # module pages: the module, e.g. 'beitv2_lab.core'


def notebooks(only: list[str] | None = None) -> list[Path]:
    "The notebooks of nbs/ that git does not ignore (tracked or new), or those named in `only` (stems)."
    try:
        out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '--', 'nbs/*.ipynb'],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        found = sorted({REPO/p for p in out if (REPO/p).exists() and (REPO/p).parent == NBS})
    except (OSError, subprocess.CalledProcessError): found = sorted(NBS.glob('*.ipynb'))   # not a git checkout
    if only is None: return found
    missing = set(only) - {p.stem for p in found}
    if missing: raise ValueError(f'only: no notebook named {sorted(missing)} in {NBS}')
    return [p for p in found if p.stem in only]


def discover(lib: str, guides_dir: Path = DOCS/'guides', only: list[str] | None = None) -> list[Page]:
    "Every page of the site, in nav order: home, guides, run notebooks, modules."
    home, runs, modules = [], [], []
    for nb in notebooks(only):
        cells = read_cells(nb)
        if nb.stem == 'index': home.append(Page(nb, 'index.md', title_of(cells, nb), 'home'))
        elif exp := default_exp(cells): modules.append(Page(nb, f'api/{exp}.md', title_of(cells, nb), 'module', f'{lib}.{exp}'))
        else: runs.append(Page(nb, f'runs/{nb.stem}.md', title_of(cells, nb), 'run'))
    if not home: raise ValueError('no nbs/index.ipynb: the home page is made from it')
    guides = []
    for md in sorted(guides_dir.glob('*.md')):
        first = md.read_text().lstrip().splitlines()[:1]
        if not first or not first[0].startswith('# '): raise ValueError(f'{md}: start the guide with its `# Title` line')
        guides.append(Page(md, f'guides/{md.name}', first[0][2:].strip(), 'guide'))
    return home + in_order(guides, GUIDES) + in_order(runs, RUNS) + modules


def in_order(pages: list[Page], names: list[str]) -> list[Page]:
    "`pages` in the order of their sources' stems in `names`; the others after them, by name."
    return sorted(pages, key=lambda p: (names.index(p.src.stem) if p.src.stem in names else len(names), p.src.stem))


def nav(pages: list[Page]) -> list:
    "MkDocs' nav: the home page, then one section per kind of page."
    sections = [('Guides', 'guide'), ('Run notebooks', 'run'), ('Modules', 'module')]
    return ([{'Home': p.out} for p in pages if p.kind == 'home']
            + [{name: [{p.title: p.out} for p in pages if p.kind == kind]} for name, kind in sections
               if any(p.kind == kind for p in pages)])


# ------------------------------------------------------------------------------------------------------ the API
def _anno(a) -> str: return a if isinstance(a, str) else inspect.formatannotation(a)
def _repr(v) -> str: return re.sub(r' at 0x[0-9a-fA-F]+', '', repr(v))     # no addresses: the same page every build


def signature(obj, name: str, drop_first: bool = False) -> str:
    "`name(a: int = 1, *, b=2) -> str`, one parameter per line when long; `drop_first`: a method's self / cls."
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    parts, star = [], False
    for i, p in enumerate(params):
        if p.kind == p.KEYWORD_ONLY and not star: parts.append('*')
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        s = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
        if p.annotation is not p.empty: s += f': {_anno(p.annotation)}'
        if p.default is not p.empty: s += (' = ' if p.annotation is not p.empty else '=') + _repr(p.default)
        parts.append(s)
        if p.kind == p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind != p.POSITIONAL_ONLY): parts.append('/')
    ret = '' if sig.return_annotation is sig.empty else f' -> {_anno(sig.return_annotation)}'
    one = f"{name}({', '.join(parts)}){ret}"
    return one if len(one) <= 100 else f'{name}(\n' + ''.join(f'    {x},\n' for x in parts) + f'){ret}'


def own_doc(obj, name: str) -> str:
    "The docstring `obj` itself carries (not an inherited one, nor a dataclass's generated `Name(field=...)`)."
    doc = vars(obj).get('__doc__') if isinstance(obj, type) else getattr(obj, '__doc__', None)
    if not doc or (dataclasses.is_dataclass(obj) and doc.startswith(f'{name}(')): return ''
    return inspect.cleandoc(doc)


def field_rows(cls) -> list[dict]:
    """Every field of dataclass `cls`: name, type, default and comment (the `# ...` after the field; a field that a
    subclass declares again without a comment keeps its base class's)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    comments = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base): comments |= {k: v for k, v in docments(base).items() if k in fields and v}
    rows = []
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        rows.append(dict(name=f.name, type=_anno(f.type), default=default, comment=comments.get(f.name, '')))
    return rows


def param_rows(obj, drop_first: bool = False) -> list[dict]:
    "The parameters of a function or class with their docments; empty when none has a comment."
    if dataclasses.is_dataclass(obj): return field_rows(obj)
    d = docments(obj, full=True)
    skip = [next(iter(d))] if drop_first and d else []
    rows = [dict(name=k, type='' if v['anno'] in (None, inspect.Parameter.empty) else _anno(v['anno']),
                 default=v['default'], comment=v['docment'] or '')
            for k, v in d.items() if k not in skip and (k != 'return' or v['docment'])]
    return rows if any(r['comment'] for r in rows) else []


def documented(code: str, module) -> list[tuple[str, object]]:
    "The functions and classes an exported cell defines that the module exports (`__all__`)."
    exported = set(getattr(module, '__all__', ()))
    names = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [(n, getattr(module, n)) for n in names if n in exported]


def methods(cls) -> list[tuple[str, object, bool]]:
    "`(name, function, bound)` of the public methods a class defines itself and documents (own docstring)."
    out = []
    for name, v in vars(cls).items():
        fn = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
        if not name.startswith('_') and inspect.isfunction(fn) and own_doc(fn, name):
            out.append((name, fn, not isinstance(v, staticmethod)))
    return out


# ------------------------------------------------------------------------------------------- markdown, links, math
FENCE = re.compile(r'^\s*(`{3,}|~{3,})')
CODE_SPAN = re.compile(r'(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)', re.S)
MATH = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)
MD_LINK = re.compile(r'(\]\()(<[^>\n]*>|[^)\s]+)')
HTML_LINK = re.compile(r'(<(?:img|a)\b[^>]*?\b(?:src|href)=")([^"]+)(")')
STRAY_LT = re.compile(rf'<(?!/?(?:{HTML_TAGS})\b|!--|https?://)')


def split_fences(text: str) -> list[tuple[bool, str]]:
    "`(is_code, chunk)` pieces of markdown `text`: fenced code blocks and the prose between them."
    out, buf, fence = [], [], None
    for line in text.splitlines(keepends=True):
        m = FENCE.match(line)
        if fence is None and m:
            if buf: out.append((False, ''.join(buf)))
            buf, fence = [line], m.group(1)
        elif fence is not None:
            buf.append(line)
            if m and m.group(1).startswith(fence) and line.strip() == m.group(1):       # the closing fence
                out.append((True, ''.join(buf))); buf, fence = [], None
        else: buf.append(line)
    if buf: out.append((fence is not None, ''.join(buf)))
    return out


def rel(target: str, page: str) -> str:
    "The relative link from page file `page` to site file `target` (both relative to the site's sources)."
    return os.path.relpath(target, os.path.dirname(page) or '.').replace(os.sep, '/')


@dataclasses.dataclass
class Site:
    lib: str               # the package, e.g. 'beitv2_lab'
    repo_url: str          # e.g. https://github.com/owner/repo: other files of the repository link there
    branch: str
    pages: dict            # repository path of a page's source ('nbs/00_core.ipynb') -> its page ('api/core.md')
    index: dict            # 'beitv2_lab.train.run' -> (page, anchor) of its API entry

    def target(self, t: str, base: Path, page: str) -> str:
        "Link target `t` written in a file in folder `base`, as seen from `page` of the site."
        if re.match(r'[a-zA-Z][\w+.-]*:', t) or t.startswith(('#', '/')): return t
        path, _, frag = t.partition('#')
        p = (base/path).resolve()
        try: r = p.relative_to(REPO).as_posix()
        except ValueError: return t
        frag = f'#{frag}' if frag else ''
        if r in self.pages: return rel(self.pages[r], page) + frag
        if r.startswith('nbs/images/'): return rel('images/' + r.removeprefix('nbs/images/'), page) + frag
        if p.exists(): return f"{self.repo_url}/{'tree' if p.is_dir() else 'blob'}/{self.branch}/{r}{frag}"
        return t                                             # a broken link stays broken: the strict build names it

    def xref(self, code: str, page: str) -> str:
        "The link of `beitv2_lab.module[.name]` (or `module.name`) to its API entry, '' when there is none."
        name = code.strip().removesuffix('()')
        hit = self.index.get(name) or self.index.get(f'{self.lib}.{name}')
        if not hit: return ''
        target, anchor = hit
        return (rel(target, page) if target != page else '') + (f'#{anchor}' if anchor else '')

    def prose(self, s: str, base: Path, page: str, cell: bool = False) -> str:
        "Links rewritten, a `<` that opens no HTML tag escaped, and in a table `cell` the `|` escaped."
        s = MD_LINK.sub(lambda m: m.group(1) + self.target(m.group(2).strip('<>'), base, page), s)
        s = HTML_LINK.sub(lambda m: m.group(1) + self.target(m.group(2), base, page) + m.group(3), s)
        s = STRAY_LT.sub('&lt;', s)
        return s.replace('|', r'\|').replace('\n', ' ') if cell else s

    def md(self, text: str, base: Path, page: str, cell: bool = False) -> str:
        "Markdown written in a file in folder `base`, ready for `page`: links, cross-references, math as MathML."
        out = []
        for is_code, chunk in split_fences(text):
            if is_code: out.append(chunk); continue
            pos = 0
            for m in CODE_SPAN.finditer(chunk):
                out.append(self._plain(chunk[pos:m.start()], base, page, cell))
                href = self.xref(m.group(2), page)
                linked = chunk[:m.start()].endswith('[') and chunk[m.end():].startswith(']')
                out.append(f'[{m.group(0)}]({href})' if href and not linked else m.group(0))
                pos = m.end()
            out.append(self._plain(chunk[pos:], base, page, cell))
        return ''.join(out)

    def _plain(self, s: str, base: Path, page: str, cell: bool) -> str:
        "Prose between code spans: its math as MathML, the rest through `prose`."
        out, pos = [], 0
        for m in MATH.finditer(s):
            out.append(self.prose(s[pos:m.start()], base, page, cell))
            tex, display = (m.group(1), 'block') if m.group(1) is not None else (m.group(2), 'inline')
            out.append(latex2mathml.converter.convert(' '.join(tex.split()), display=display))
            pos = m.end()
        out.append(self.prose(s[pos:], base, page, cell))
        return ''.join(out)


# ---------------------------------------------------------------------------------------------------- rendering
def code_block(code: str, title: str = '') -> str:
    fence = '````' if '```' in code else '```'
    return f'{fence}python' + (f' title="{title}"' if title else '') + f'\n{code.rstrip()}\n{fence}'


def fold(title: str, body: str) -> str:
    "A collapsed block (pymdownx.details) holding `body`."
    return f'??? abstract "{title}"\n\n' + ''.join(f'    {line}' if line.strip() else line
                                                    for line in body.splitlines(keepends=True))


def table(rows: list[dict], site: Site, page: str, first: str = 'parameter') -> str:
    "A markdown table of parameter rows: name, type, default, comment."
    def default(v): return '' if v is inspect.Parameter.empty else f'`{_repr(v)}`'   # a `|` in code stays in its cell
    lines = [f'| {first} | type | default | details |', '|---|---|---|---|']
    for r in rows:
        lines.append(f"| `{r['name']}` | {'`' + r['type'] + '`' if r['type'] else ''} | {default(r['default'])} | "
                     f"{site.md(r['comment'], REPO, page, cell=True)} |")
    return '\n'.join(lines)


def api_entry(name: str, obj, site: Site, page: str, level: int = 3, drop_first: bool = False) -> str:
    "One exported function or class: heading (its anchor), signature, docstring, parameter table, methods."
    head = '#' * level + f' `{name}` {{ #{name} }}'
    is_dc = dataclasses.is_dataclass(obj)
    sig = f'@dataclass\nclass {name}' if is_dc else signature(obj, name, drop_first)
    if isinstance(obj, type) and not is_dc: sig = f'class {sig}'
    parts = [head, code_block(sig)]
    if isinstance(obj, type):
        bases = [b for b in obj.__bases__ if b is not object]
        if bases: parts.append('Based on ' + ', '.join(f'`{b.__module__}.{b.__qualname__}`' for b in bases) + '.')
    if doc := own_doc(obj, name): parts.append(doc)
    try: rows = param_rows(obj, drop_first)
    except OSError as e:          # inspect found no source for it: a module changed on disk after it was imported
        raise RuntimeError(f'{page}: cannot read the source of {name} ({e}); rerun once nbdev_export has finished') from e
    if rows: parts.append(table(rows, site, page, 'field' if is_dc else 'parameter'))
    text = '\n\n'.join(site.md(p, REPO, page) if i > 1 else p for i, p in enumerate(parts))
    if isinstance(obj, type):
        for m, fn, bound in methods(obj):
            text += '\n\n' + api_entry(f'{name}.{m}', fn, site, page, level + 1, drop_first=bound)
    return text


def render_module(page: Page, cells: list[dict], site: Site) -> str:
    "A module notebook: its prose, the API of each exported cell with its source folded, its examples and tests."
    module, parts = importlib.import_module(page.module), []
    for c in cells:
        if c['cell_type'] == 'markdown': parts.append(site.md(c['source'], page.src.parent, page.out)); continue
        if c['cell_type'] != 'code': continue                      # raw cells: front matter
        d, code = directives(c['source'])
        if {'default_exp', 'hide', 'exporti'} & d.keys() or not code.strip(): continue
        if {'export', 'exports'} & d.keys():
            entries = [api_entry(n, o, site, page.out) for n, o in documented(code, module)]
            if entries or 'exports' in d: parts += entries + [fold('Source', code_block(code))]
        else: parts.append(code_block(code, ', '.join(f'#|{k}' for k in d)))
    return '\n\n'.join(parts) + '\n'


def literal_params(src: str) -> list[dict]:
    "The `name = literal  # comment` lines of a parameters cell as rows (type: the literal's)."
    lines, rows = src.splitlines(), []
    for node in ast.parse(src).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f'parameters cell: not a flat `name = literal` line: {ast.unparse(node)}')
        value, rest = ast.literal_eval(node.value), lines[node.end_lineno - 1][node.end_col_offset:]
        rows.append(dict(name=node.targets[0].id, type=type(value).__name__, default=value,
                         comment=rest.split('#', 1)[1].strip() if '#' in rest else ''))
    return rows


def config_class(cells: list[dict]):
    "The config dataclass a run notebook builds with `config_from(Cls, globals())`, or None."
    code = '\n'.join(c['source'] for c in cells if c['cell_type'] == 'code')
    if not (m := re.search(r'config_from\(\s*(\w+)', code)): return None
    imp = re.search(rf'^from\s+([\w.]+)\s+import\s+(?:\(|)[^\n]*\b{m.group(1)}\b', code, re.M)
    if not imp: raise ValueError(f'the notebook calls config_from({m.group(1)}, ...) but never imports {m.group(1)}')
    return getattr(importlib.import_module(imp.group(1)), m.group(1))


def parameters(page: Page, cells: list[dict], src: str, site: Site) -> str:
    """The parameters section of a run notebook: a table of its config dataclass (what `config_from` accepts; that
    the cell holds exactly its fields is tests/test_harness.py's check), or of its cell when it has none."""
    cmd = f'`papermill nbs/{page.src.name} out.ipynb -p NAME VALUE`'
    if (cls := config_class(cells)) is None:
        return (f'## Parameters\n\nSet each with {cmd}; this notebook has no config dataclass, so the table is '
                f"its `parameters` cell.\n\n{table(literal_params(src), site, page.out)}")
    qual = f'{cls.__module__}.{cls.__qualname__}'
    intro = site.md(f'Set each with {cmd}. Every parameter is a field of `{qual}`: a name that is not one is an '
                    'error naming the closest field.', REPO, page.out)
    return f'## Parameters\n\n{intro}\n\n{table(field_rows(cls), site, page.out)}'


def render_run(page: Page, cells: list[dict], site: Site) -> str:
    "A run notebook: its prose and code, its parameters cell as the table of its config."
    parts = []
    for c in cells:
        if c['cell_type'] == 'markdown': parts.append(site.md(c['source'], page.src.parent, page.out))
        elif c['cell_type'] == 'code':
            if 'parameters' in c.get('metadata', {}).get('tags', []): parts.append(parameters(page, cells, c['source'], site))
            elif (code := directives(c['source'])[1]).strip(): parts.append(code_block(code))
    return '\n\n'.join(parts) + '\n'


def render(page: Page, site: Site) -> str:
    "The markdown of one page."
    if page.kind == 'guide': return site.md(page.src.read_text(), DOCS/'guides', page.out)   # links as from docs/guides/
    cells = read_cells(page.src)
    if page.kind == 'module': return render_module(page, cells, site)
    if page.kind == 'run': return render_run(page, cells, site)
    base = REPO if page.kind == 'home' else page.src.parent      # index.ipynb is the README: links from the root
    return '\n\n'.join(site.md(c['source'], base, page.out) for c in cells if c['cell_type'] == 'markdown') + '\n'


def api_index(pages: list[Page]) -> dict:
    "'beitv2_lab.module[.name[.method]]' -> (page, anchor) for every API entry the module pages will show."
    index = {}
    for p in pages:
        if p.kind != 'module': continue
        module, index[p.module] = importlib.import_module(p.module), (p.out, '')
        for c in read_cells(p.src):
            d, code = directives(c['source'])
            if c['cell_type'] != 'code' or not {'export', 'exports'} & d.keys(): continue
            for name, obj in documented(code, module):
                index[f'{p.module}.{name}'] = (p.out, name)
                if isinstance(obj, type): index |= {f'{p.module}.{name}.{m}': (p.out, f'{name}.{m}') for m, *_ in methods(obj)}
    return index


# -------------------------------------------------------------------------------------------------------- build
MARK = '.docs-build'      # marks a folder this script writes, so that it never empties any other


def claim(d: Path, empty: bool = True) -> Path:
    "Mark folder `d` (created) as this script's, emptied if `empty`; refuse a non-empty folder it did not make."
    if d.exists() and any(d.iterdir()) and not (d/MARK).exists():
        raise ValueError(f'{d} is not empty and was not made by docs/build.py: give an empty or new folder')
    if empty: shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    (d/MARK).write_text('made by docs/build.py; emptied by every build\n')   # MkDocs leaves dot files in place
    return d


def build(site_dir: Path = REPO/'_site', src_dir: Path = REPO/'_site_src', guides_dir: Path = DOCS/'guides',
          only: list[str] | None = None) -> list[Page]:
    """Write every page into `src_dir` and render the site into `site_dir` (strict); the pages. The guides are read
    from `guides_dir` and linked as the files of docs/guides/ they are (or stand in for)."""
    cfg = settings()
    if str(REPO) not in sys.path: sys.path.insert(0, str(REPO))   # the package as the notebooks export it
    pages = discover(cfg['lib_name'], Path(guides_dir), only)
    sources = {(DOCS/'guides'/p.src.name if p.kind == 'guide' else p.src).relative_to(REPO).as_posix(): p.out for p in pages}
    site = Site(cfg['lib_name'], cfg['git_url'], cfg['branch'], sources, api_index(pages))
    site_dir = claim(Path(site_dir), empty=False)          # MkDocs empties it itself (and leaves the mark)
    src_dir = claim(Path(src_dir))
    for p in pages:
        (src_dir/p.out).parent.mkdir(parents=True, exist_ok=True)
        (src_dir/p.out).write_text(render(p, site))
    shutil.copytree(NBS/'images', src_dir/'images')
    shutil.copyfile(DOCS/'extra.css', src_dir/'extra.css')
    warnings = []
    class Collect(logging.Handler):
        def emit(self, record): warnings.append(record.getMessage())
    handler = Collect(logging.WARNING)
    logging.getLogger('mkdocs').addHandler(handler)
    try:
        mkdocs_build(load_config(str(DOCS/'mkdocs.yml'), docs_dir=str(src_dir), site_dir=str(site_dir), nav=nav(pages),
                                 strict=True))
    except Abort as e: raise RuntimeError(f'{e}\n' + '\n'.join(warnings)) from None
    finally: logging.getLogger('mkdocs').removeHandler(handler)
    return pages


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--site-dir', default=str(REPO/'_site'), help='where the HTML goes (default _site/)')
    ap.add_argument('--src-dir', default=str(REPO/'_site_src'), help='where the generated markdown goes (default _site_src/)')
    ap.add_argument('--only', nargs='*', help="build only these notebooks (stems, e.g. index 00_core), for a quick look")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try: pages = build(Path(args.site_dir), Path(args.src_dir), only=args.only)
    except (RuntimeError, ValueError) as e: sys.exit(f'docs build failed: {e}')
    kinds = {k: sum(p.kind == k for p in pages) for k in ('guide', 'run', 'module')}
    print(f"built {len(pages)} pages ({kinds['module']} modules, {kinds['run']} run notebooks, {kinds['guide']} guides) "
          f'into {args.site_dir} in {time.monotonic() - t0:.1f} s')


if __name__ == '__main__':
    main()
