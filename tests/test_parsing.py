"""Biaffine parser, Chu-Liu/Edmonds decoding, CoNLL-18 attachment scores (Ch. 02; spec ch4 §8 tests 8, 9, 16)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

from mlmc.data import Sentence, label_vocab, read_conllu
from mlmc.metalearn import trainable_params
from mlmc.parsing import (
    BiaffineParser,
    ScalarMix,
    attachment_scores,
    chu_liu_edmonds,
    collate_sentences,
    evaluate,
)

torch.set_num_threads(1)

SYLLABLES = ["ba", "ko", "ri", "tu", "me", "na", "so", "li"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + SYLLABLES + ["##" + s for s in SYLLABLES] + ["."])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_encoder(seed: int = 0) -> XLMRobertaModel:
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        max_position_embeddings=64,
    )
    return XLMRobertaModel(cfg)


def tiny_parser(n_labels: int, seed: int = 0, **kw) -> BiaffineParser:
    enc = tiny_encoder(seed)
    kw = {"layer_dropout": 0.0, "input_dropout": 0.0, "dropout": 0.0, **kw}
    return BiaffineParser(enc, n_labels, arc_dim=32, label_dim=16, **kw)


TOY = [
    Sentence(["bako", "ri", "tumena", "."], [2, 0, 2, 2], ["nsubj", "root", "obj", "punct"], ["N", "V", "N", "P"]),
    Sentence(["so", "likoba", "me", "."], [2, 3, 0, 3], ["det", "nsubj:pass", "root", "punct"], ["D", "N", "V", "P"]),
    Sentence(
        ["na", "tu", "ribaso", "koli", "."], [2, 0, 4, 2, 2], ["nsubj", "root", "amod", "obj", "punct"], list("NVANP")
    ),
    Sentence(["me", "sotu", "."], [0, 1, 1], ["root", "obj", "punct"], ["V", "N", "P"]),
]


# ---------------------------------------------------------------- scalar mix (test 16)


def test_scalar_mix_at_init_is_plain_mean():
    torch.manual_seed(1)
    layers = [torch.randn(2, 5, 7) for _ in range(4)]
    mix = ScalarMix(4)
    assert torch.allclose(mix(layers), torch.stack(layers).mean(0), atol=1e-6)


def test_scalar_mix_weights_and_scale():
    torch.manual_seed(2)
    layers = [torch.randn(3, 4) for _ in range(3)]
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
        mix.gamma.fill_(2.0)
    w = np.exp([0.0, 1.0, 2.0])
    w /= w.sum()
    expected = 2.0 * sum(float(wi) * h for wi, h in zip(w, layers, strict=True))
    assert torch.allclose(mix(layers), expected, atol=1e-6)
    with pytest.raises(ValueError, match="expects 3 layers"):
        mix(layers[:2])


# ---------------------------------------------------------------- attachment scores (test 8)

GOLD = """# sent_id = s1
# text = it's taken home.
1-2\tit's\t_\t_\t_\t_\t_\t_\t_\t_
1\tit\tit\tPRON\t_\t_\t3\tnsubj:pass\t_\t_
2\t's\tbe\tAUX\t_\t_\t3\taux:pass\t_\t_
3\ttaken\ttake\tVERB\t_\t_\t0\troot\t_\t_
3.1\tgone\tgo\tVERB\t_\t_\t_\t_\t0:root\t_
4\thome\thome\tNOUN\t_\t_\t3\tobl\t_\t_
5\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

"""
# word 1: nsubj vs nsubj:pass -> correct once subtypes are stripped; word 2: aux vs aux:pass -> idem;
# word 4: right head, wrong label; word 5 (punctuation): wrong head. Hand count: UAS 4/5, LAS 3/5.
PRED = """# sent_id = s1
1-2\tit's\t_\t_\t_\t_\t_\t_\t_\t_
1\tit\t_\tPRON\t_\t_\t3\tnsubj\t_\t_
2\t's\t_\tAUX\t_\t_\t3\taux\t_\t_
3\ttaken\t_\tVERB\t_\t_\t0\troot\t_\t_
3.1\tgone\t_\tVERB\t_\t_\t_\t_\t0:root\t_
4\thome\t_\tNOUN\t_\t_\t3\tobj\t_\t_
5\t.\t_\tPUNCT\t_\t_\t4\tpunct\t_\t_

"""


def test_attachment_scores_hand_made_conllu(tmp_path):
    (tmp_path / "gold.conllu").write_text(GOLD)
    (tmp_path / "pred.conllu").write_text(PRED)
    gold, pred = read_conllu(tmp_path / "gold.conllu"), read_conllu(tmp_path / "pred.conllu")
    scores = attachment_scores(gold, pred)
    assert scores["n_words"] == 5  # MWT line and empty node ignored, punctuation counted
    assert scores["UAS"] == pytest.approx(4 / 5)
    assert scores["LAS"] == pytest.approx(3 / 5)
    exact = attachment_scores(gold, pred, strip_subtypes=False)
    assert exact["UAS"] == pytest.approx(4 / 5)
    assert exact["LAS"] == pytest.approx(1 / 5)  # only 'taken' keeps an identical label and head


def test_attachment_scores_on_pairs_and_errors():
    gold = [[(2, "nsubj"), (0, "root")], [(0, "root")]]
    pred = [[(2, "nsubj:pass"), (1, "root")], [(0, "punct")]]
    scores = attachment_scores(gold, pred)
    assert (scores["UAS"], scores["LAS"], scores["n_words"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3)
    with pytest.raises(ValueError, match="same number of sentences"):
        attachment_scores(gold, pred[:1])
    with pytest.raises(ValueError, match="sentence 1"):
        attachment_scores(gold, [pred[0], []])


# ---------------------------------------------------------------- Chu-Liu/Edmonds (test 9)


def _is_single_root_tree(heads) -> bool:
    n = len(heads)
    if sum(h == 0 for h in heads) != 1 or any(h == i + 1 or not 0 <= h <= n for i, h in enumerate(heads)):
        return False
    for i in range(1, n + 1):
        seen, v = set(), i
        while v != 0:
            if v in seen:
                return False
            seen.add(v)
            v = heads[v - 1]
    return True


def _tree_score(scores: np.ndarray, heads) -> float:
    return float(sum(scores[i + 1, h] for i, h in enumerate(heads)))


def _brute_force(scores: np.ndarray) -> tuple[tuple[int, ...], float]:
    n = scores.shape[0] - 1
    trees = [h for h in itertools.product(range(n + 1), repeat=n) if _is_single_root_tree(h)]
    best = max(trees, key=lambda h: _tree_score(scores, h))
    return best, _tree_score(scores, best)


def test_chu_liu_edmonds_equals_brute_force_on_random_5x5():
    rng = np.random.default_rng(0)
    for _ in range(40):
        scores = rng.normal(size=(5, 5))
        heads = chu_liu_edmonds(scores)
        best, best_score = _brute_force(scores)
        assert _is_single_root_tree(list(heads))
        assert _tree_score(scores, heads) == pytest.approx(best_score, abs=1e-12)
        assert tuple(heads) == best


def test_chu_liu_edmonds_root_heavy_matrix_keeps_one_root():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 5))
    scores[:, 0] += 10.0  # every word prefers the root: the unconstrained optimum has 4 root children
    heads = chu_liu_edmonds(scores)
    assert list(heads).count(0) == 1
    assert tuple(heads) == _brute_force(scores)[0]


def test_chu_liu_edmonds_repairs_greedy_cycle():
    scores = np.full((5, 5), -5.0)
    scores[1, 2] = scores[2, 1] = 3.0  # words 1 and 2 head each other
    scores[3, 4] = scores[4, 3] = 2.0  # and so do words 3 and 4
    scores[1:, 0] = [-1.0, 0.5, -2.0, -0.5]
    scores[3, 1] = 1.0
    greedy = scores[1:].argmax(1)
    assert greedy[0] == 2 and greedy[1] == 1  # the greedy decode has a cycle
    heads = chu_liu_edmonds(scores)
    assert _is_single_root_tree(list(heads))
    assert tuple(heads) == _brute_force(scores)[0]


def test_chu_liu_edmonds_matches_networkx_on_larger_matrices():
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(3)
    for n in (6, 9, 14):
        scores = rng.normal(size=(n + 1, n + 1))
        heads = chu_liu_edmonds(scores)
        best = -np.inf
        for r in range(1, n + 1):  # single root: try each root child with networkx's arborescence
            g = nx.DiGraph()
            g.add_edge(0, r, weight=scores[r, 0])
            g.add_weighted_edges_from((h, d, scores[d, h]) for d in range(1, n + 1) for h in range(1, n + 1) if h != d)
            tree = nx.maximum_spanning_arborescence(g)
            best = max(best, sum(scores[d, h] for h, d in tree.edges()))
        assert _is_single_root_tree(list(heads))
        assert _tree_score(scores, heads) == pytest.approx(best, abs=1e-9)


def test_chu_liu_edmonds_bad_input():
    with pytest.raises(ValueError, match="square"):
        chu_liu_edmonds(np.zeros((3, 4)))
    bad = np.zeros((3, 3))
    bad[1, :] = -np.inf
    with pytest.raises(ValueError, match="finite head score"):
        chu_liu_edmonds(bad)


# ---------------------------------------------------------------- collate and parser


def test_collate_points_to_first_piece(tokenizer):
    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    for b, sent in enumerate(TOY):
        pieces = tokenizer.convert_ids_to_tokens(batch["input_ids"][b].tolist())
        for w, word in enumerate(sent.words):
            assert pieces[int(batch["word_index"][b, w])] == tokenizer.tokenize(word)[0]
        assert batch["word_mask"][b].sum() == len(sent)
        assert batch["heads"][b, : len(sent)].tolist() == sent.heads
        assert [labels[i] for i in batch["labels"][b, : len(sent)].tolist()] == sent.deprels
    with pytest.raises(ValueError, match="lacks deprel"):
        collate_sentences(TOY, tokenizer, ["root"])


def test_parser_overfits_four_sentences(tokenizer):
    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    parser = tiny_parser(len(labels))
    opt = torch.optim.Adam(parser.parameters(), lr=3e-3)
    parser.train()
    losses = []
    for _ in range(60):
        out = parser(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.1 * losses[0]
    result = evaluate(parser, [batch])
    assert result["UAS"] == 1.0 and result["LAS"] == 1.0
    assert parser.training  # evaluate restores the mode
    assert [p.heads for p in result["predictions"]] == [s.heads for s in TOY]


def test_parser_decoding_and_params_path(tokenizer):
    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    parser = tiny_parser(len(labels)).eval()
    with torch.no_grad():
        greedy = parser(batch, decode="greedy")
        mst = parser(batch, decode="mst")
    mask = batch["word_mask"]
    assert torch.equal(greedy.heads[mask], greedy.arc_logp[:, 1:].argmax(-1)[mask])
    for b, sent in enumerate(TOY):
        n = len(sent)
        expected = chu_liu_edmonds(mst.arc_logp[b, : n + 1, : n + 1].double().numpy())
        assert mst.heads[b, :n].tolist() == expected.tolist()
    plain = evaluate(parser, [batch])
    swapped = evaluate(parser, [batch], params=trainable_params(parser))
    assert plain["loss"] == pytest.approx(swapped["loss"], rel=1e-6)
    assert plain["UAS"] == swapped["UAS"] and plain["LAS"] == swapped["LAS"]
    with pytest.raises(ValueError, match="decode"):
        parser(batch, decode="beam")


def test_evaluate_applies_gate_mask(tokenizer):
    class RecordingGate:
        def __init__(self):
            self.calls = []

        def set(self, mask):
            self.calls.append(mask)

    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    parser = tiny_parser(len(labels))
    gate, head_mask = RecordingGate(), torch.ones(2, 4)
    evaluate(parser, [batch], gate=gate, mask=head_mask)
    assert gate.calls[0] is head_mask and gate.calls[-1] is None
    with pytest.raises(ValueError, match="gate"):
        evaluate(parser, [batch], mask=head_mask)


def test_wordpiece_dropout_masks_only_word_pieces(tokenizer):
    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    parser = tiny_parser(len(labels), wordpiece_dropout=1.0, mask_token_id=tokenizer.mask_token_id)
    seen = {}
    parser.encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(ids=kw["input_ids"]), with_kwargs=True)
    parser.train()
    parser(batch)
    words = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
    assert (seen["ids"][words] == tokenizer.mask_token_id).all()
    assert torch.equal(seen["ids"][~words], batch["input_ids"][~words])
    with pytest.raises(ValueError, match="mask_token_id"):
        tiny_parser(len(labels), wordpiece_dropout=0.2)


def test_head_gate_and_dynamic_mask_integration(tokenizer):
    heads = pytest.importorskip("mlmc.heads")
    subnetworks = pytest.importorskip("mlmc.subnetworks")
    from mlmc.metalearn import fomaml_outer_step, inner_adapt

    labels = label_vocab([TOY])
    batch = collate_sentences(TOY, tokenizer, labels)
    parser = tiny_parser(len(labels))
    gate = heads.HeadGate(parser)
    full = evaluate(parser, [batch])
    assert evaluate(parser, [batch], gate=gate, mask=torch.ones(2, 4))["loss"] == full["loss"]
    mask = torch.ones(2, 4)
    mask[0, 1] = mask[1, 3] = 0
    off = evaluate(parser, [batch], gate=gate, mask=mask)
    assert off["loss"] != full["loss"] and gate.gates is None

    phi = inner_adapt(parser, batch, 3, 0.05, gate=gate, mask=mask)
    name, d = "encoder.encoder.layer.0.attention.self.query.weight", 8
    theta = dict(parser.named_parameters())
    assert torch.equal(phi[name][d : 2 * d], theta[name][d : 2 * d])  # head (0, 1) is off: its rows stay put
    assert not torch.equal(phi[name][:d], theta[name][:d])
    assert evaluate(parser, [batch], gate=gate, mask=mask, params=phi)["loss"] < off["loss"]

    dyn = subnetworks.DynamicMask(torch.ones(2, 4), k_off=2)
    opt = torch.optim.SGD([*parser.parameters(), *dyn.parameters()], lr=1e-3)
    fomaml_outer_step(parser, {"aa": (batch, batch)}, {"aa": dyn}, 2, 0.01, opt, gate=gate)
    assert dyn.scores.grad is not None and dyn.scores.grad.abs().sum() > 0  # query gradient reaches the scores (STE)


# ---------------------------------------------------------------- sentences longer than the encoder's positions
def _long(words: list[str]) -> Sentence:
    n = len(words)
    return Sentence(words, [0] + [1] * (n - 1), ["root"] + ["dep"] * (n - 1), ["X"] * n)


def test_collate_short_sentences_are_unchanged(tokenizer):
    batch = collate_sentences(TOY, tokenizer, label_vocab([TOY]), max_length=62)
    ref = tokenizer([list(s.words) for s in TOY], is_split_into_words=True, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["special_tokens_mask"][batch["attention_mask"].bool()].sum() == 2 * len(TOY)  # [CLS], [SEP]


def test_collate_long_sentence_keeps_the_first_piece_of_every_word(tokenizer):
    """40 two-piece words (80 pieces) in 62 positions: every word keeps its first piece, the parser runs."""
    sent = _long(["bako", "rime", "tuso", "lina"] * 10)
    labels = label_vocab([[sent]])
    batch = collate_sentences([sent], tokenizer, labels, max_length=62)
    assert batch["input_ids"].shape[1] <= 62
    pieces = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert [pieces[int(i)] for i in batch["word_index"][0]] == [tokenizer.tokenize(w)[0] for w in sent.words]
    assert len(set(batch["word_index"][0].tolist())) == len(sent)  # distinct positions: no word lost
    parser = tiny_parser(len(labels)).eval()
    assert evaluate(parser, [batch])["n_words"] == len(sent)


def test_collate_sentence_with_more_words_than_positions(tokenizer):
    sent = _long(["ba", "ko", "ri"] * 30)  # 90 one-piece words, 60 positions besides [CLS]/[SEP]
    batch = collate_sentences([sent], tokenizer, label_vocab([[sent]]), max_length=62)
    assert batch["input_ids"].shape[1] == 62
    idx = batch["word_index"][0].tolist()
    assert idx[:60] == list(range(1, 61)) and set(idx[60:]) == {60}  # the last words share the last kept piece
    with torch.no_grad():
        tiny_parser(len(label_vocab([[sent]]))).eval()(batch)
    with pytest.raises(ValueError, match="max_length"):
        collate_sentences([sent], tokenizer, label_vocab([[sent]]), max_length=2)
