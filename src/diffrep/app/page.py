"""The app's single HTML page (two tabs, a few lines of JavaScript, no external assets)."""

from __future__ import annotations

from html import escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;max-width:1400px}
nav button{font-size:1em;padding:.4em 1em;margin-right:.3em}
nav button.active{font-weight:bold;border-bottom:3px solid #c0392b}
section{display:none} section.active{display:block}
label{margin-right:1em} .cols{display:flex;gap:2em;align-items:flex-start}
.cols>div{flex:1;min-width:0}
.msg.error{color:#a00;background:#fee;padding:.5em} .msg.note{color:#654;background:#ffd;padding:.5em}
.msg.info{color:#333;background:#eef;padding:.5em}
.stats{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start} details{font-size:.85em}
table.summary{border-collapse:collapse;font-size:.85em} table.summary th{text-align:left;padding-right:1em}
.gallery-row{display:flex;gap:4px;margin:4px 0} .thumb{margin:0;font-size:.7em;width:96px}
.thumb img{width:96px;height:96px;image-rendering:pixelated;display:block}
.thumb.gen img{outline:2px solid #333} .thumb.above img{outline:3px solid #c0392b}
.threshold{color:#c0392b;font-weight:bold;margin:.5em 0}
table.matches img{width:64px;height:64px;image-rendering:pixelated} tr.above td{color:#c0392b}
#val-table img{width:64px;height:64px;image-rendering:pixelated} td.above{color:#c0392b}
.try-out{display:flex;gap:2em} .try-out .thumb.gen{width:192px} .try-out .gen img{width:192px;height:192px}
textarea{width:40em;height:4em}
"""

SCRIPT = """
function tab(name){for(const s of document.querySelectorAll('section'))s.classList.toggle('active',s.id==name);
 for(const b of document.querySelectorAll('nav button'))b.classList.toggle('active',b.dataset.tab==name);}
async function fetchInto(id,url,opts){const el=document.getElementById(id);el.innerHTML='<p class="msg info">loading…</p>';
 try{const r=await fetch(url,opts);el.innerHTML=await r.text();}
 catch(e){el.innerHTML='<p class="msg error">The app did not answer: '+e+'</p>';}}
function browse(){const q=k=>encodeURIComponent(document.getElementById('b-'+k).value);
 const base='/api/browse?dataset='+q('dataset')+'&preset='+q('preset')+'&embedder='+q('embedder')+'&run=';
 fetchInto('browse-a',base+q('run'));
 const b=document.getElementById('b-compare').value;
 if(b){fetchInto('browse-b',base+encodeURIComponent(b));}else{document.getElementById('browse-b').innerHTML='';}}
async function tryPrompt(ev){ev.preventDefault();const v=k=>document.getElementById('t-'+k).value;
 const body=JSON.stringify({dataset:v('dataset'),run:v('run'),preset:v('preset'),embedder:v('embedder'),
  seed:v('seed'),prompt:v('prompt')});
 await fetchInto('try-out','/api/try',{method:'POST',headers:{'Content-Type':'application/json'},body});}
async function validate(ev){ev.preventDefault();const v=k=>document.getElementById('v-'+k).value;
 const body=JSON.stringify({dataset:v('dataset'),runs:[v('run'),v('run2')],preset:v('preset'),embedder:v('embedder')});
 await fetchInto('val-out','/api/validate',{method:'POST',headers:{'Content-Type':'application/json'},body});}
window.addEventListener('load',()=>{if(document.getElementById('b-run'))browse();});
"""


def select(ident: str, label: str, values: list[str], empty: str | None = None) -> str:
    opts = ([f'<option value="">{escape(empty)}</option>'] if empty is not None else []) + [
        f'<option value="{escape(v)}">{escape(v)}</option>' for v in values
    ]
    return f'<label>{escape(label)} <select id="{ident}">{"".join(opts)}</select></label>'


def browse_tab(choices: dict[str, list[str]]) -> str:
    fields = "".join(select(f"b-{k}", k, choices[k]) for k in ("dataset", "run", "preset", "embedder"))
    fields += select("b-compare", "compare with run", choices["run"], empty="—")
    return (
        f'<form onchange="browse()" onsubmit="event.preventDefault();browse()">{fields}</form>'
        '<div class="cols"><div id="browse-a"></div><div id="browse-b"></div></div>'
    )


def _model_fields(prefix: str, datasets, runs, presets, embedders, compare: bool) -> str:
    """The dataset, model (and a second model), preset and embedder selects of a generating tab."""
    second = select(f"{prefix}-run2", "compare with", runs, empty="—") if compare else ""
    return (
        select(f"{prefix}-dataset", "dataset", datasets)
        + select(f"{prefix}-run", "model", runs)
        + second
        + select(f"{prefix}-preset", "preset", presets)
        + select(f"{prefix}-embedder", "embedder", embedders)
    )


def try_tab(datasets: list[str], runs: list[str], presets: list[str], embedders: list[str]) -> str:
    return (
        '<form id="try-form" onsubmit="tryPrompt(event)">'
        + _model_fields("t", datasets, runs, presets, embedders, compare=False)
        + '<label>seed <input id="t-seed" value="0" size="8"></label><br>'
        '<textarea id="t-prompt" placeholder="a prompt, e.g. a caption of a training image"></textarea><br>'
        '<button id="t-go" type="submit">Generate</button></form><div id="try-out"></div>'
    )


def validation_tab(datasets: list[str], runs: list[str], presets: list[str], embedders: list[str]) -> str:
    return (
        '<form id="val-form" onsubmit="validate(event)">'
        + _model_fields("v", datasets, runs, presets, embedders, compare=True)
        + '<button id="v-go" type="submit">Run the validation prompts</button></form><div id="val-out"></div>'
    )


def page(title: str, browse_html: str, try_html: str, validation_html: str = "") -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        f"<h1>{escape(title)}</h1>"
        '<nav><button data-tab="browse" class="active" onclick="tab(\'browse\')">Browse</button>'
        '<button data-tab="try" onclick="tab(\'try\')">Try a prompt</button>'
        '<button data-tab="validation" onclick="tab(\'validation\')">Validation prompts</button></nav>'
        f'<section id="browse" class="active">{browse_html}</section>'
        f'<section id="try">{try_html}</section>'
        f'<section id="validation">{validation_html}</section></body></html>'
    )
