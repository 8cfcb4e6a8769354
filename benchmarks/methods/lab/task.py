"""The lab's task: D-digit addition with carries, zero-padded, answer written most significant digit first.

``"047+589="`` → ``"0636"`` (+ EOS). Why this task:

* **exact answers** — the gold completion is unique, so a problem is right or wrong, nothing to parse;
* **carries make it hard for a small model** — written most-significant-digit first, the first answer digit
  depends on the whole carry chain, so a 2-layer transformer trained on a few thousand problems memorises its
  training set (loss → 0) while generalising only partly: SFT saturates *below* 100%, the regime where the paper
  says weak-driven training keeps improving;
* **a fixed-length answer** — every prompt and every completion has the same number of tokens, so the held-out set
  is one unpadded ``[N, L]`` tensor, and exact match by teacher-forced argmax equals greedy decoding (see
  ``scoring.py``), which scores 4,000 problems in one forward pass;
* **a large problem space** (10^{2D} pairs) — train and test are disjoint draws, thousands of test problems are
  free, and every seed can draw its own training set.

The tokenizer is character-level (one token per digit, ``+``, ``=``, plus pad/BOS/EOS), built on the fly.
"""

from __future__ import annotations

import numpy as np

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ALPHABET = "0123456789+="


class AdditionTask:
    """D-digit + D-digit addition, zero-padded operands, (D+1)-digit zero-padded answer."""

    def __init__(self, digits: int = 3):
        if digits < 1:
            raise ValueError(f"digits must be >= 1, got {digits}")
        self.digits = int(digits)

    @property
    def space(self) -> int:
        """Number of distinct problems (ordered operand pairs)."""
        return 10 ** (2 * self.digits)

    @property
    def prompt_len(self) -> int:
        return 2 * self.digits + 2  # "a+b="

    @property
    def answer_len(self) -> int:
        return self.digits + 1

    def prompt(self, a: int, b: int) -> str:
        d = self.digits
        return f"{a:0{d}d}+{b:0{d}d}="

    def answer(self, a: int, b: int) -> str:
        return f"{a + b:0{self.digits + 1}d}"

    def carries(self, a: int, b: int) -> int:
        """Number of carries in the column addition (a difficulty measure)."""
        n, c = 0, 0
        for _ in range(self.digits):
            c = (a % 10 + b % 10 + c) // 10
            n += c
            a, b = a // 10, b // 10
        return n

    def split(self, n_train: int, n_test: int, seed: int, test_seed: int = 10_000):
        """Disjoint (train, test) operand arrays ``[n, 2]``.

        The test set depends only on ``test_seed`` (the same for every training seed, so arms and seeds are scored
        on the same problems); the training set is drawn with ``seed`` from the problems not in the test set.
        """
        if n_train + n_test > self.space:
            raise ValueError(f"{n_train} + {n_test} problems asked, but {self.digits}-digit addition has only "
                             f"{self.space} distinct problems; raise digits or lower the sizes")
        test_ids = np.random.default_rng(test_seed).choice(self.space, size=n_test, replace=False)
        rng = np.random.default_rng(seed)
        taken = set(test_ids.tolist())
        train_ids: list[int] = []
        while len(train_ids) < n_train:
            for i in rng.choice(self.space, size=2 * (n_train - len(train_ids)), replace=False).tolist():
                if i not in taken:
                    taken.add(i)
                    train_ids.append(i)
                    if len(train_ids) == n_train:
                        break
        base = 10 ** self.digits

        def pairs(ids):
            ids = np.asarray(ids, dtype=np.int64)
            return np.stack([ids // base, ids % base], axis=1)

        return pairs(train_ids), pairs(test_ids)

    def rows(self, pairs) -> list[dict]:
        """Prompt/completion rows (TRL's standard, non-conversational format); TRL appends the EOS."""
        return [{"prompt": self.prompt(int(a), int(b)), "completion": self.answer(int(a), int(b)),
                 "carries": self.carries(int(a), int(b))} for a, b in pairs]

    def dataset(self, pairs):
        from datasets import Dataset

        return Dataset.from_list(self.rows(pairs))


def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per character of :data:`ALPHABET`, plus
    ``<pad>`` (id 0), ``<bos>``, ``<eos>``. Unknown characters raise (the vocabulary has no UNK)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(specials + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)
