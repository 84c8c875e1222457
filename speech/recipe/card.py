"""The speech zoo's model cards (``README.md`` of ``speech/`` and ``speech-draft/``) and the distill section."""
from __future__ import annotations

import json
from pathlib import Path

from mmspec.training import card, write_card


def _sample_lines(report: dict) -> list[str]:
    """Model-card lines describing the generated samples by measured properties only."""
    lines = []
    for smp in report.get("samples", []):
        g, r = smp["generated"], smp["espeak_reference"]
        lines.append(f"* `{smp['file']}` ({smp['voice']}): \"{smp['text']}\" -- {g['duration_s']} s "
                     f"(espeak reference {r['duration_s']} s), RMS {g['rms_dbfs']} dBFS (ref {r['rms_dbfs']}), "
                     f"spectral flatness {g['spectral_flatness']} (ref {r['spectral_flatness']}), voiced fraction "
                     f"{g['voiced_fraction_of_loud']} (ref {r['voiced_fraction_of_loud']}), median F0 "
                     f"{g['median_f0_hz']} Hz (ref {r['median_f0_hz']} Hz). {_voicing_verdict(g, r)}")
    return lines


def _voicing_verdict(g: dict, r: dict) -> str:
    """A measured (not listened) verdict: espeak-like voicing = at least half the reference's voiced
    fraction with a median F0 within 30% of the reference's."""
    f0_ok = g["median_f0_hz"] and r["median_f0_hz"] and abs(g["median_f0_hz"] / r["median_f0_hz"] - 1) < 0.3
    if g["voiced_fraction_of_loud"] >= 0.5 * r["voiced_fraction_of_loud"] and f0_ok:
        return "Espeak-like voicing is present by this measure."
    return "Espeak-like voicing is NOT present by this measure."


def write_cards(zoo: Path, report: dict, meta: dict) -> None:
    """``README.md`` model cards for ``speech/`` and ``speech-draft/`` from the train and eval summaries."""
    summ_path = zoo / "train_summary.json"
    tr = json.loads(summ_path.read_text()) if summ_path.exists() else {}
    hw = (f"Trained on {tr.get('device', 'unknown hardware')} in {tr.get('total_s', '?')} s wall time "
          f"(budget {tr.get('time_budget_s', '?')} s, shared with other jobs), "
          f"{tr.get('train_utterances', '?')} training utterances.")
    c = report["codec"]
    common = [
        "Data: English sentences (first sentences of Python standard-library docstrings) synthesized with "
        f"espeak-ng in {len(meta['voices'])} voices ({', '.join(meta['voices'])}), 16 kHz, stored as 8-bit "
        "mu-law; 5% of utterances held out. This is robotic formant-synthesis speech, not human speech.",
        f"Codec (the zoo's `speech/codec`, an encodec `EncodecModel` built from its SEANet/RVQ modules): "
        f"{meta['num_codebooks']} codebooks x {meta['codebook_size']} codes at {meta['frame_rate']} Hz, "
        f"{tr.get('codec_steps', '?')} steps (waveform L1 + multi-resolution mel L1 + commitment; no "
        f"adversarial loss). Held-out reconstruction: log-mel L1 {c['log_mel_l1']}, SI-SNR {c['si_snr_db']} dB.",
        "Format: see `mmspec_speech.json` and the docstring of `mmspec.speech.lm` (text bytes + voice token, "
        "then delayed codec frames; parallel heads, logits `[B, T, K, V]`).",
        "Load: `ZooCodec.from_pretrained(<zoo>/speech/codec)` (`mmspec.speech.codec`) and "
        "`SpeechLM.from_pretrained(<folder>/lm, dtype=torch.float32)` (`mmspec.speech.lm`); weights are fp16 "
        "safetensors. Rebuild the shipped zoo from a checkout's root with `python -m mmspec.speech.recipe prepare`, "
        "`train --out speech/zoo` and `evaluate --zoo speech/zoo` (without them it writes ./zoo-out/speech).",
    ]
    samples = ["Sampled with top-k 50, temperature 1, from held-out transcripts; the espeak reference is the "
               "original held-out utterance. Voiced fraction = share of loud 40 ms frames with a periodic "
               "(autocorrelation > 0.5) pitch between 60 and 400 Hz.", "", *_sample_lines(report), "",
               "Limitations: a toy model trained for minutes on ~40 minutes of synthetic speech; intelligibility "
               "is not measured and should not be assumed. Its purpose is to exercise speculative decoding of "
               "codec LMs offline."]
    tgt = card("mmspec speech zoo: target codec LM", [hw, "", *common, "",
               f"LM: Llama backbone, {report['target_params'] / 1e6:.2f}M parameters, {tr.get('target_steps', '?')} "
               f"steps; held-out cross-entropy {report['target_valid_ce']} nats/token."],
               [("Samples (not listened to: measured properties only)", samples)])
    distilled = zoo / "speech-draft" / "distill_summary.json"
    then = ", then the `distill` stage below. On real espeak codes: held-out" if distilled.exists() else ". Held-out"
    distill = [distill_section(json.loads(distilled.read_text()))] if distilled.exists() else []
    dft = card("mmspec speech zoo: draft codec LM", [hw, "", *common, "",
               f"Draft LM: {report['draft_params'] / 1e6:.2f}M parameters, same vocabulary, codebooks and text "
               f"format as the target (`../speech`), {tr.get('draft_steps', '?')} steps (cross-entropy, then "
               f"distillation on the target's logits){then} cross-entropy {report['draft_valid_ce']} nats/token; "
               f"teacher-forced top-1 agreement with the target {report['draft_target_top1_agreement']}.", "",
               "The codec lives in `../speech/codec`."], distill)
    write_card(zoo / "speech", tgt)
    write_card(zoo / "speech-draft", dft)


DISTILL_TITLE = "Distillation on the target's own greedy output"
DISTILL_HEADING = f"## {DISTILL_TITLE}"


def distill_section(rec: dict) -> tuple[str, list[str]]:
    """The draft card's section written by ``distill`` (and kept by ``evaluate``): one paragraph per stage."""
    stages = []
    while rec:
        stages.insert(0, rec)
        rec = rec.get("previous")
    data = stages[-1]
    kept = " and were kept" if data.get("kept", data["texts"]) != data["texts"] else ""
    lines = [f"The target spoke {data['texts']} transcripts (every stdlib sentence, voices in turn; "
             f"{data['ended']} ended within the frame limit{kept}) with greedy decoding in "
             f"{data['generation_s']:.0f} s on {data['device']}: {data['steps_generated']:,} LM steps, "
             f"{data['valid_utterances']} transcripts held out. Speculative decoding only needs the draft to "
             "predict the target, so no audio is involved in this stage. Held-out scores are against the target's "
             "greedy steps; agreement is teacher-forced top-1 per codebook token (delay padding included). The "
             "draft now models the target's greedy speech rather than the espeak audio, so its cross-entropy on "
             "real held-out codes (the `evaluate` numbers above) is higher than before this stage; what it buys "
             "is acceptance under greedy decoding (BENCHMARKS.md).", ""]
    for n, st in enumerate(stages, 1):
        before = stages[n - 2].get("layers") if n > 1 else None
        grow = f", grown to {st['layers']} layers (new layers start as the identity)" \
            if before is not None and st.get("layers", before) > before else ""
        lines += [f"{n}. `python -m mmspec.speech.recipe distill --minutes {st['minutes']:g}"
                  f"{' --grow-layers ' + str(st['layers']) if grow else ''}`: from {st['init']}{grow}, "
                  f"{st['params'] / 1e6:.2f}M parameters, {st['steps']} steps of cross-entropy"
                  f"{' + KL to the target logits' if st['kl'] else ''} on {st['device']}; held-out cross-entropy "
                  f"{st['valid_ce_on_target_greedy_before']} -> {st['valid_ce_on_target_greedy']} nats/token, "
                  f"agreement {st['greedy_top1_agreement_valid']}."]
    return DISTILL_TITLE, lines
