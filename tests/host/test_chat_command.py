"""`edgelora chat`: a GGUF or a bundle's model, its own chat template and stops, offline."""

import shutil

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.errors import UsageError
from edgelora.host.chat import ChatSession, open_model


def test_one_prompt_answered_with_the_gguf_chat_template(smollm2_gguf):
    result = CliRunner().invoke(cli, ["chat", str(smollm2_gguf), "What is the capital of France? One word.",
                                      "--max-tokens", "16"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output
    assert "<|im_end|>" not in result.output and "<|im_start|>" not in result.output  # stopped at end of turn


def test_bundle_folder_gives_modelfile_stops_and_system(smollm2_gguf, tmp_path):
    bundle = tmp_path / "bot-0.1.0"
    bundle.mkdir()
    shutil.copy(smollm2_gguf, bundle / "bot.Q4_1.gguf")
    (bundle / "Modelfile").write_text('FROM ./bot.Q4_1.gguf\nSYSTEM """Answer in French."""\n'
                                      'PARAMETER stop "<|im_end|>"\nPARAMETER stop "e"\nPARAMETER temperature 0\n')
    with open_model(bundle) as model:
        assert model.gguf == (bundle / "bot.Q4_1.gguf").resolve()
        assert model.stops == ["<|im_end|>", "e"] and model.system == "Answer in French."
        session = ChatSession(model, n_ctx=512)
        try:
            answer = "".join(session.reply("Write a long sentence about the weather.", max_tokens=48))
            assert "e" not in answer  # the Modelfile's stop string cut it, as Ollama would
            assert session.messages[0] == {"role": "system", "content": "Answer in French."}
            assert session.messages[-1] == {"role": "assistant", "content": answer}
        finally:
            session.close()


def test_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="expected a .gguf file, a bundle folder or a bundle .tar"):
        with open_model(tmp_path / "notes.txt"):
            pass


def test_piped_stdin_is_one_prompt(smollm2_gguf):
    result = CliRunner().invoke(cli, ["chat", str(smollm2_gguf), "--max-tokens", "8"],
                                input="What is the capital of France? One word.\n")
    assert result.exit_code == 0 and "Paris" in result.output and ">>>" not in result.output


def test_interactive_loop_on_a_terminal(smollm2_gguf):
    import os
    import pty
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "edgelora.cli", "chat", str(smollm2_gguf), "--max-tokens", "8"],
                            stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal seen
        start, end = len(seen), time.monotonic() + timeout
        while marker not in seen[start:] and time.monotonic() < end:
            try:
                seen += os.read(leader, 4096)
            except OSError:
                break

    try:
        read_until(b">>> ")
        os.write(leader, b"What is the capital of France? One word.\n")
        read_until(b"Paris")
        read_until(b">>> ", timeout=60)  # the next turn's prompt
        os.write(leader, b"\n")  # an empty line ends the chat
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)
    text = seen.decode("utf-8", "replace")
    assert "chatting with" in text and "Paris" in text and text.count(">>> ") >= 2
