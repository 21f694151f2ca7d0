"""Export a Hugging Face tokenizer to GGUF tokenizer keys.

Two kinds, as llama.cpp names them in ``tokenizer.ggml.model``:

- ``gpt2``: byte-level BPE (tokenizer.json with a ByteLevel pre-tokenizer: Llama 3,
  SmolLM2, Qwen). llama.cpp re-implements each pre-tokenizer by name, so
  ``tokenizer.ggml.pre`` is chosen the way llama.cpp's own converter chooses it: hash
  the token ids of a fixed check string and look the hash up in a table. An unknown
  hash is an error, never a guess: a wrong name loads fine and silently tokenizes
  differently.
- ``llama``: SentencePiece BPE (tokenizer.model: Llama 2, Mistral 7B, Gemma, Phi-3):
  pieces with their scores (llama.cpp merges by score), ``<0xNN>`` byte-fallback
  pieces typed BYTE, and whether a space is prepended to the text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgelora.errors import UnknownTokenizer

# Byte-exact copy of the check string in llama.cpp's converter (get_vocab_base_pre).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001F680 (normal) \U0001F636\u200d\U0001F32B\ufe0f (multiple emojis concatenated) "
    "\u2705 \U0001F999\U0001F999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001F601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(ids of CHECK_TEXT)) -> llama.cpp pre-tokenizer name, from llama.cpp's
# converter table; only names the vendored libllama knows. Where llama.cpp lists a
# hash twice, its later entry wins, as there.
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",
    "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664": "hunyuan",
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",
    "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c": "hy_v4",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",
    "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86": "falcon-h1",
    "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896": "falcon-h1",
    "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b": "falcon-h1",
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",
    "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f": "qwen35",
    "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273": "grok-2",
    "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df": "jina-v2-de",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",
    "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252": "gemma4",
    "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed": "spark2_5",
    "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1": "tiny_aya",
    "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e": "cohere2moe",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d": "jina-v5-nano",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a": "jais-2",
    "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf": "a.x-4.0",
    "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4": "midm-2.0",
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",
    "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df": "afmoe",
    "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206": "bailingmoe2",
    "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e": "granite-docling",
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",
    "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665": "kormo",
    "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1": "youtu",
    "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91": "solar-open",
    "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f": "exaone-moe",
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d": "joyai-llm",
    "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869": "kanana2",
    "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015": "f2llmv2",
    "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57": "sarvam-moe",
    "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af": "talkie",
    "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4": "minicpm5",
    "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60": "granite-embed-multi-97m",
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "granite-embed-multi-311m",
    "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d": "mellum2",
    "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac": "laguna",
    "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd": "ufakzeka",
}

# gguf.TokenType values (kept here so `plan` need not import gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_NAMES = ("bos", "eos", "unk", "pad")
PAD_SCORE = -1000.0  # score of padding and added tokens (SentencePiece), as llama.cpp's converter


@dataclass
class TokenizerExport:
    """Everything written under ``tokenizer.*``, computed before the file is opened."""

    pre: str
    pre_hash: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    n_real_tokens: int = 0
    model: str = "gpt2"
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # SentencePiece only

    def summary(self) -> dict:
        return {"model": self.model, "pre": self.pre, "pre_hash": self.pre_hash,
                "n_tokens": len(self.tokens), "n_real_tokens": self.n_real_tokens,
                "n_merges": len(self.merges), "special_ids": dict(self.special_ids),
                "add_bos": self.add_bos, "add_eos": self.add_eos,
                "add_space_prefix": self.add_space_prefix,
                "chat_template": self.chat_template is not None}

    def padded_to(self, rows: int, where: Path) -> "TokenizerExport":
        """The token list made exactly ``rows`` long (the embedding rows written): missing ids
        become unused ``[PADi]`` tokens; a real token beyond ``rows`` is an error."""
        if len(self.tokens) > rows:
            last_real = max(i for i, t in enumerate(self.token_types) if t != UNUSED)
            if last_real >= rows:
                raise UnknownTokenizer(f"{where}: token id {last_real} does not fit the {rows} embedding rows")
        n = min(len(self.tokens), rows)
        extra = range(n, rows)
        scores = None if self.scores is None else self.scores[:n] + [PAD_SCORE] * len(extra)
        return dataclasses.replace(
            self, tokens=self.tokens[:n] + [f"[PAD{i}]" for i in extra],
            token_types=self.token_types[:n] + [UNUSED] * len(extra), scores=scores)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _has_byte_level(node) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            return True
        return any(_has_byte_level(v) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


def tokenizer_kind(tokenizer_dir: str | Path) -> str:
    """``gpt2`` (byte-level BPE tokenizer.json) or ``llama`` (SentencePiece BPE tokenizer.model);
    anything this exporter cannot write faithfully is refused by name."""
    tokenizer_dir = Path(tokenizer_dir)
    tj_path = tokenizer_dir / "tokenizer.json"
    sp_path = tokenizer_dir / "tokenizer.model"
    tj = json.loads(tj_path.read_text(encoding="utf-8")) if tj_path.is_file() else None
    model = (tj or {}).get("model") or {}
    if tj is not None and model.get("type") == "BPE" and not model.get("byte_fallback") \
            and _has_byte_level(tj.get("pre_tokenizer")):
        return "gpt2"
    if sp_path.is_file():
        if tj is not None and model.get("type") not in ("BPE", None):
            raise UnknownTokenizer(f"{tj_path}: a {model.get('type')} tokenizer is not supported for GGUF "
                                   "export (SentencePiece BPE or byte-level BPE only)")
        info = sentencepiece_info(sp_path)
        if info["model_type"] != SP_BPE:
            raise UnknownTokenizer(f"{sp_path}: SentencePiece model type {info['model_type']} is not supported "
                                   "(only BPE, which llama.cpp's 'llama' tokenizer implements)")
        return "llama"
    if tj is None:
        raise UnknownTokenizer(f"{tj_path}: missing (a fast tokenizer.json or a SentencePiece tokenizer.model "
                               "is required)")
    raise UnknownTokenizer(
        f"{tj_path}: only byte-level BPE (ByteLevel pre-tokenizer, no byte_fallback) or SentencePiece "
        f"BPE (tokenizer.model) is supported; got model {model.get('type')!r}, "
        f"byte_fallback={bool(model.get('byte_fallback'))} and no tokenizer.model")


def check_tokenizer_kind(tokenizer_dir: str | Path) -> dict:
    """tokenizer.json parsed, after refusing what the byte-level BPE exporter cannot write."""
    tokenizer_dir = Path(tokenizer_dir)
    if tokenizer_kind(tokenizer_dir) != "gpt2":
        raise UnknownTokenizer(f"{tokenizer_dir / 'tokenizer.json'}: not a byte-level BPE tokenizer")
    return json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))


SP_BPE = 2  # sentencepiece ModelProto.TrainerSpec.ModelType


def _proto_fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message level (value: int or bytes)."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            yield num, wire, varint()
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            yield num, wire, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield num, wire, buf[i:i + size]
            i += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def sentencepiece_info(sp_path: Path) -> dict:
    """model_type and normalizer flags from a tokenizer.model (protobuf), without protobuf.

    Only these two messages are read: ModelProto.trainer_spec (2).model_type (3) and
    ModelProto.normalizer_spec (3).add_dummy_prefix (3) / remove_extra_whitespaces (4).
    """
    info = {"model_type": 1, "add_dummy_prefix": True, "remove_extra_whitespaces": True}  # proto defaults
    try:
        for num, wire, value in _proto_fields(sp_path.read_bytes()):
            if num == 2 and wire == 2:
                for f, w, v in _proto_fields(value):
                    if f == 3 and w == 0:
                        info["model_type"] = v
            elif num == 3 and wire == 2:
                for f, w, v in _proto_fields(value):
                    if f == 3 and w == 0:
                        info["add_dummy_prefix"] = bool(v)
                    elif f == 4 and w == 0:
                        info["remove_extra_whitespaces"] = bool(v)
    except ValueError as e:
        raise UnknownTokenizer(f"{sp_path}: not a SentencePiece model ({e})") from None
    return info


def _load_hf(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _load(tokenizer_dir: Path, kind: str, config: dict | None = None):
    """The tokenizer training used: tokenizer.json through ``tokenizers`` alone where transformers
    would load it unchanged (no ~3 s transformers import on the conversion's critical path),
    else transformers' AutoTokenizer."""
    if kind == "gpt2":
        from edgelora.gguf.tokenizer_json import plain_tokenizer_json

        tok = plain_tokenizer_json(tokenizer_dir, config)
        if tok is not None:
            return tok
    return _load_hf(tokenizer_dir)


def pre_tokenizer_hash(tok) -> str:
    # Default add_special_tokens=True, exactly as llama.cpp hashes it (Llama 3's BOS is part of it).
    return hashlib.sha256(str(tok.encode(CHECK_TEXT)).encode()).hexdigest()


def _pre_from_hash(chkhsh: str, where: Path) -> str:
    try:
        return KNOWN_PRE_HASHES[chkhsh]
    except KeyError:
        raise UnknownTokenizer(
            f"{where / 'tokenizer.json'}: pre-tokenizer hash {chkhsh} is not one llama.cpp knows; "
            "refusing to guess tokenizer.ggml.pre") from None


def pre_tokenizer_name(tokenizer_dir: str | Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for this tokenizer (no weights loaded)."""
    tokenizer_dir = Path(tokenizer_dir)
    if tokenizer_kind(tokenizer_dir) == "llama":
        _load_hf(tokenizer_dir)  # the HF tokenizer must load: it is what the checks compare with
        return "default"  # SentencePiece has no pre-tokenizer for llama.cpp to choose
    return _pre_from_hash(pre_tokenizer_hash(_load(tokenizer_dir, "gpt2")), tokenizer_dir)


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _special_ids(tokenizer_dir: Path, vocab: dict[str, int], config: dict) -> dict[str, int]:
    """bos/eos/unk/pad from tokenizer_config.json, then config.json (as gguf-py's SpecialVocab)."""
    tcfg = _read_json(tokenizer_dir / "tokenizer_config.json")
    out: dict[str, int] = {}
    for name in SPECIAL_NAMES:
        text = _token_text(tcfg.get(f"{name}_token"))
        if text is not None and text in vocab:
            out[name] = vocab[text]
            continue
        cid = config.get(f"{name}_token_id")
        if isinstance(cid, list):
            cid = cid[0] if cid else None
        if isinstance(cid, int):
            out[name] = cid
    return out


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<s>", "</s>", "<pad>", "<unk>", "<mask>")


def _bpe_vocab(tokenizer_dir: Path, tok, n_vocab: int):
    """(tokens, types, merges) of a byte-level BPE tokenizer, ids 0..n_vocab-1."""
    tj = check_tokenizer_kind(tokenizer_dir)
    vocab = tok.get_vocab()
    added = tok.get_added_vocab()
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in added:
            special = bool(getattr(decoder.get(i), "special", False))
            # CONTROL tokens are what llama.cpp matches as one token in special-aware parsing
            types.append(CONTROL if special or _looks_special(text) else USER_DEFINED)
            tokens.append(text)
        else:
            types.append(NORMAL)
            tokens.append(text)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges") or []]
    if not merges:
        raise UnknownTokenizer(f"{tokenizer_dir / 'tokenizer.json'}: BPE tokenizer has no merges")
    return tokens, types, merges


def _sentencepiece_vocab(tokenizer_dir: Path, tok, n_vocab: int):
    """(tokens, types, scores) from tokenizer.model, with the HF tokenizer's added tokens on top
    (typed CONTROL when special, else USER_DEFINED, so llama.cpp matches them whole)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    scores = [PAD_SCORE] * n_vocab
    for i in range(min(sp.get_piece_size(), n_vocab)):
        tokens[i] = sp.id_to_piece(i)
        scores[i] = float(sp.get_score(i))
        types[i] = (UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
                    UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    for i, added in decoder.items():
        if i >= n_vocab:
            continue
        text = getattr(added, "content", str(added))
        if i < sp.get_piece_size() and text == tokens[i] and types[i] in (CONTROL, UNKNOWN):
            continue  # <s>, </s>, <unk>: SentencePiece already types them
        tokens[i] = text
        scores[i] = PAD_SCORE
        types[i] = CONTROL if getattr(added, "special", False) else USER_DEFINED
    return tokens, types, scores


def _adds_space_prefix(tok) -> bool:
    """Whether the HF tokenizer (the one training used) puts "▁" before the first word."""
    pieces = tok.convert_ids_to_tokens(tok.encode("a", add_special_tokens=False))
    return bool(pieces) and pieces[0].startswith("\u2581")


def build_tokenizer_export(tokenizer_dir: str | Path, *, n_vocab: int | None = None,
                           config: dict | None = None) -> TokenizerExport:
    """Tokens, types, merges or scores, pre name, special ids, template.

    With ``n_vocab`` the token list is padded to that many embedding rows (see
    :meth:`TokenizerExport.padded_to`); without, it ends at the highest real id.
    """
    tokenizer_dir = Path(tokenizer_dir)
    kind = tokenizer_kind(tokenizer_dir)
    tok = _load(tokenizer_dir, kind, config or None)
    config = config or {}
    vocab = tok.get_vocab()
    n_ids = max(vocab.values()) + 1 if vocab else 0
    if kind == "llama":
        from sentencepiece import SentencePieceProcessor

        n_sp = SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model")).get_piece_size()
        n_ids = max(n_ids, n_sp)
    size = max(n_ids, n_vocab or 0)
    merges: list[str] = []
    scores = None
    add_space_prefix = None
    if kind == "gpt2":
        chkhsh = pre_tokenizer_hash(tok)
        pre = _pre_from_hash(chkhsh, tokenizer_dir)
        tokens, types, merges = _bpe_vocab(tokenizer_dir, tok, size)
    else:
        chkhsh, pre = "", "default"
        tokens, types, scores = _sentencepiece_vocab(tokenizer_dir, tok, size)
        add_space_prefix = _adds_space_prefix(tok)

    special = _special_ids(tokenizer_dir, vocab, config)
    probe = "Hello world"
    with_special, plain = tok.encode(probe), tok.encode(probe, add_special_tokens=False)
    bos, eos = special.get("bos"), special.get("eos")
    add_bos = bos is not None and with_special[:1] == [bos] and plain[:1] != [bos]
    add_eos = eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos]

    template = getattr(tok, "chat_template", None)
    if template is None:
        template = _read_json(tokenizer_dir / "tokenizer_config.json").get("chat_template")
    if template is None and (tokenizer_dir / "chat_template.jinja").is_file():
        template = (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]

    export = TokenizerExport(pre=pre, pre_hash=chkhsh, tokens=tokens, token_types=types, merges=merges,
                             special_ids=special, add_bos=add_bos, add_eos=add_eos,
                             chat_template=template, n_real_tokens=len(vocab), model=kind, scores=scores,
                             add_space_prefix=add_space_prefix)
    if n_vocab is not None:
        export = export.padded_to(n_vocab, tokenizer_dir / "tokenizer.json")
    return export


def write_tokenizer(writer, export: TokenizerExport) -> None:
    """Add the ``tokenizer.*`` keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(export.model)
    writer.add_tokenizer_pre(export.pre)
    writer.add_token_list(export.tokens)
    if export.scores is not None:
        writer.add_token_scores([float(x) for x in export.scores])
    writer.add_token_types([int(t) for t in export.token_types])
    if export.merges:
        writer.add_token_merges(export.merges)
    if export.add_space_prefix is not None:
        writer.add_add_space_prefix(bool(export.add_space_prefix))
    for name, tid in export.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(int(tid))
    writer.add_add_bos_token(bool(export.add_bos))
    writer.add_add_eos_token(bool(export.add_eos))
    if export.chat_template:
        writer.add_chat_template(export.chat_template)
