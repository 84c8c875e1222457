"""Greedy autoregressive token ids of the three zoo targets on fixed prompts, as JSON: run it in two trees
to check that a refactor left the outputs unchanged (``python benchmarks/greedy_ids.py out.json``)."""
import json
import sys

import mmspec
from mmspec.text import TextTarget
from mmspec.text.prompts import held_out_prompts
from mmspec.image import ImageTarget
from mmspec.speech import SpeechTarget
out = {}
t = TextTarget.from_pretrained("zoo:code-target")
for p in held_out_prompts(4):
    out.setdefault("text", []).append(mmspec.autoregressive(t, p, max_new_tokens=48).token_ids())
i = ImageTarget.from_pretrained("zoo:shapes")
for p in ["red ring", "blue square"]:
    out.setdefault("image", []).append(mmspec.autoregressive(i, p, max_new_tokens=64).token_ids())
s = SpeechTarget.from_pretrained("zoo:speech")
for p in ["Hello world.", "Tomorrow will be a sunny day."]:
    out.setdefault("speech", []).append(mmspec.autoregressive(s, p, max_new_tokens=60).token_ids())
json.dump(out, open(sys.argv[1], "w"))
