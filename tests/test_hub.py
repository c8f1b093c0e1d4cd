"""Push and pull adapter versions with the real huggingface_hub client against the test Hub.

Every test goes through ``adapterhub.Hub.push``/``pull`` (or the CLI) with the endpoint and token
taken from ``HF_ENDPOINT``/``HF_TOKEN``, as a user's machine would, and checks the result on the
Hub side with the plain client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hubserver.fixtures import HubEnv
from huggingface_hub import HfApi, hf_hub_download
from tinymodels import build_tiny_llama_folder, make_lora_folder

from adapterhub import Hub
from adapterhub.core.progress import ProgressEvent
from adapterhub.errors import (
    BaseMismatchWarning,
    ConfigError,
    CorruptBlobError,
    HubAuthError,
    HubNotFoundError,
    IncompatibleAdapterError,
    UnsafeAdapterError,
)
from adapterhub.hfhub import MANIFEST_FILE, HubManifest
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE

PROMPT = "What is two plus two?"
METRICS = {"train_loss": 1.25, "general_ppl_base": 31.5, "general_ppl_adapter": 33.0}


def _hub(home: Path, base_dir: Path) -> Hub:
    hub = Hub(home)
    hub.init(str(base_dir), precision="fp32")
    return hub


@pytest.fixture
def alice(tmp_path: Path, tiny_base_dir: Path) -> Hub:
    """Alice's hub home on the tiny base."""
    return _hub(tmp_path / "alice", tiny_base_dir)


@pytest.fixture
def bob(tmp_path: Path, tiny_base_dir: Path) -> Hub:
    """Another home (another machine) on the same tiny base."""
    return _hub(tmp_path / "bob", tiny_base_dir)


def _register(hub: Hub, lora: Path, name: str = "pirate", dataset: str = "") -> str:
    """Register ``lora`` as an SFT version of ``name`` with metrics and a recipe."""
    info = hub.base_info
    recipe = {"method": "sft", "dataset": {"path": "data/pirate.jsonl"}, "lora": {"r": 4}}
    if dataset:
        recipe["dataset"] = {"name": dataset}
    version = hub.registry.register(
        name,
        {CONFIG_FILE: lora / CONFIG_FILE, WEIGHTS_FILE: lora / WEIGHTS_FILE},
        base_fingerprint=info.fingerprint,
        template_hash=info.template_hash,
        method="sft",
        recipe=recipe,
        dataset_fingerprint="d" * 64,
        metrics=METRICS,
    )
    return version.ref


def _read(hub: HubEnv, repo: str, filename: str, revision: str = "v1") -> bytes:
    """A file of the repo, fetched with the plain client."""
    path = hf_hub_download(repo, filename, revision=revision, endpoint=hub.endpoint)
    return Path(path).read_bytes()


def _repo(name: str, request: pytest.FixtureRequest) -> str:
    """A repo id unique to the test (the server lives for the whole module)."""
    return f"alice/{name}-{request.node.name.removeprefix('test_')[:24].strip('_')}"


def test_push_writes_a_peft_repo_with_card_and_manifest(
    hub: HubEnv, alice: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    ref = _register(alice, lora_dir)
    repo = _repo("pirate", request)
    events: list[ProgressEvent] = []
    result = alice.push(ref, repo, progress=events.append)
    assert result.created and result.tag == "v1" and result.branch == "main"
    assert [e.kind for e in events] == ["start", "done"]

    api = HfApi(endpoint=hub.endpoint)
    files = set(api.list_repo_files(repo, revision="v1"))
    assert files == {
        ".gitattributes",
        "README.md",
        MANIFEST_FILE,
        CONFIG_FILE,
        WEIGHTS_FILE,
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    refs = api.list_repo_refs(repo)
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", result.commit)]
    assert _read(hub, repo, WEIGHTS_FILE) == (lora_dir / WEIGHTS_FILE).read_bytes()
    config = json.loads(_read(hub, repo, CONFIG_FILE))
    assert config["base_model_name_or_path"] == alice.base_info.name
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    template = _read(hub, repo, "chat_template.jinja")
    assert template == (alice.base_info.path / "chat_template.jinja").read_bytes()

    manifest = HubManifest.model_validate_json(_read(hub, repo, MANIFEST_FILE))
    assert (manifest.name, manifest.number, manifest.method) == ("pirate", 1, "sft")
    assert manifest.base.fingerprint == alice.base_info.fingerprint
    assert manifest.metrics == METRICS

    info = api.model_info(repo, revision="v1")
    assert info.library_name == "peft" and info.pipeline_tag == "text-generation"
    assert {"lora", "peft", "sft"} <= set(info.tags or [])
    card = _read(hub, repo, "README.md").decode()
    for needle in (
        "# pirate (version 1)",
        "Forgetting check",
        "general_ppl_adapter | 33",
        "PeftModel.from_pretrained",
        "vllm serve",
        f"adapterhub pull {repo}@v1",
    ):
        assert needle in card
    commit = api.list_repo_commits(repo)[0]
    assert commit.commit_id == result.commit and commit.title == "adapterhub: pirate@1 (sft)"


def test_same_version_twice_is_a_noop_and_new_version_adds_commit_and_tag(
    hub: HubEnv,
    alice: Hub,
    lora_dir: Path,
    tiny_base_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = _repo("versions", request)
    first = alice.push(_register(alice, lora_dir), repo)
    again = alice.push("pirate@1", repo)
    api = HfApi(endpoint=hub.endpoint)
    assert not again.created and again.commit == first.commit
    assert len(api.list_repo_commits(repo)) == 2  # the Hub's initial commit + v1

    second_lora = make_lora_folder(tiny_base_dir, tmp_path / "lora2", seed=7)
    second = alice.push(_register(alice, second_lora), repo)
    assert second.created and second.tag == "v2" and second.commit != first.commit
    refs = api.list_repo_refs(repo)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first.commit, "v2": second.commit}
    assert [b.target_commit for b in refs.branches] == [second.commit]
    assert [c.commit_id for c in api.list_repo_commits(repo)][:2] == [second.commit, first.commit]
    assert not alice.push("pirate@1", repo).created  # an old version already there: still no-op

    # A tag holding another adapter's version is never overwritten.
    alice.registry.register(
        "ninja",
        {CONFIG_FILE: lora_dir / CONFIG_FILE, WEIGHTS_FILE: second_lora / WEIGHTS_FILE},
        base_fingerprint=alice.base_info.fingerprint,
        template_hash=alice.base_info.template_hash,
        method="sft",
    )
    with pytest.raises(Exception, match="already holds pirate@1") as info:
        alice.push("ninja@1", repo)
    assert type(info.value).__name__ == "HubError"


def test_round_trip_gives_identical_weights_and_generations(
    hub: HubEnv, alice: Hub, bob: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    repo = _repo("trip", request)
    pushed = alice.push(_register(alice, lora_dir), repo)
    events: list[ProgressEvent] = []
    pulled = bob.pull(repo, revision="v1", progress=events.append)
    assert pulled.created and pulled.commit == pushed.commit
    version = pulled.version
    assert version.ref == "pirate@1" and version.method == "sft"
    assert version.source["hub"] == repo and version.source["commit"] == pushed.commit
    assert version.source["upstream"]["ref"] == "pirate@1"
    assert version.metrics == METRICS
    assert bob.registry.read_file(version, WEIGHTS_FILE) == (lora_dir / WEIGHTS_FILE).read_bytes()
    steps = [e for e in events if e.kind == "step"]
    assert steps and steps[-1].step == steps[-1].total_steps > 0

    mine = alice.generate("pirate@1", PROMPT, max_tokens=12, temperature=0)
    theirs = bob.generate(version.ref, PROMPT, max_tokens=12, temperature=0)
    plain = bob.generate(None, PROMPT, max_tokens=12, temperature=0)
    assert mine == theirs
    assert theirs != plain  # the adapter really is in use

    # The same commit again (by tag or by sha) registers nothing new.
    assert not bob.pull(repo, revision="v1").created
    again = bob.pull(repo, revision=pushed.commit)
    assert not again.created and again.version.ref == "pirate@1"
    assert [v.ref for v in bob.list()] == ["pirate@1"]


def test_tags_branches_and_shas_map_to_versions(
    hub: HubEnv,
    alice: Hub,
    bob: Hub,
    lora_dir: Path,
    tiny_base_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = _repo("map", request)
    v1 = alice.push(_register(alice, lora_dir), repo)
    lora2 = make_lora_folder(tiny_base_dir, tmp_path / "lora2", seed=3)
    v2 = alice.push(_register(alice, lora2), repo)
    exp = alice.push("pirate@1", repo, revision="experiments")  # v1 already tagged: no-op
    assert not exp.created

    by_main = bob.pull(repo, name="main-head")
    by_tag = bob.pull(repo, revision="v1", name="first")
    by_sha = bob.pull(repo, revision=v2.commit, name="by-sha")
    assert by_main.commit == v2.commit and by_tag.commit == v1.commit
    assert not by_sha.created and by_sha.version.ref == "main-head@1"  # same commit as main
    weights = {
        r.version.ref: bob.registry.read_file(r.version, WEIGHTS_FILE) for r in (by_main, by_tag)
    }
    assert weights["first@1"] == (lora_dir / WEIGHTS_FILE).read_bytes()
    assert weights["main-head@1"] == (lora2 / WEIGHTS_FILE).read_bytes()

    # A version pushed to another branch gets its own commit there and its tag.
    lora3 = make_lora_folder(tiny_base_dir, tmp_path / "lora3", seed=4)
    v3 = alice.push(_register(alice, lora3), repo, revision="experiments")
    refs = HfApi(endpoint=hub.endpoint).list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": v2.commit,
        "experiments": v3.commit,
    }
    assert bob.pull(repo, revision="experiments").version.source["commit"] == v3.commit


def test_auth_errors(
    hub: HubEnv,
    alice: Hub,
    lora_dir: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = _register(alice, lora_dir)
    repo = _repo("auth", request)
    with pytest.raises(HubAuthError, match="refused the token") as bad:
        alice.push(ref, repo, token="hf_not_a_real_token")
    assert type(bad.value.__cause__).__module__.startswith("huggingface_hub")
    with pytest.raises(HubAuthError):
        alice.push(ref, repo, token="hf_alice_read")  # read-only token
    with pytest.raises(HubAuthError):
        alice.push(ref, "bob/not-alices", token="hf_alice_write")  # someone else's namespace
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # the token from the environment
    with pytest.raises(HubAuthError):
        alice.pull("alice/anything")
    monkeypatch.setenv("HF_TOKEN", "hf_alice_write")
    alice.push(ref, repo, private=True)
    with pytest.raises(HubNotFoundError, match="does not exist or is private"):
        alice.pull(repo, token="hf_bob_write")  # private: invisible to Bob


def test_missing_repo_revision_and_adapter_files(
    hub: HubEnv, alice: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(HubNotFoundError, match="does not exist or is private"):
        alice.pull("alice/no-such-repo")
    repo = _repo("missing", request)
    alice.push(_register(alice, lora_dir), repo)
    with pytest.raises(HubNotFoundError, match="revision 'v99' does not exist"):
        alice.pull(repo, revision="v99")
    empty = _repo("empty", request)
    HfApi(endpoint=hub.endpoint).create_repo(empty)
    with pytest.raises(HubNotFoundError, match="no adapter_model.safetensors"):
        alice.pull(empty)
    with pytest.raises(ConfigError):
        alice.pull("not a repo id")


def test_pickle_only_repo_is_refused(
    hub: HubEnv, alice: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = lora_dir.parent / "pickled"
    folder.mkdir()
    (folder / CONFIG_FILE).write_bytes((lora_dir / CONFIG_FILE).read_bytes())
    torch.save(load_file(lora_dir / WEIGHTS_FILE), folder / "adapter_model.bin")
    repo = _repo("pickled", request)
    api = HfApi(endpoint=hub.endpoint)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=folder)
    with pytest.raises(UnsafeAdapterError, match=r"pickled weights \['adapter_model.bin'\]"):
        alice.pull(repo)
    assert alice.list() == []


def test_foreign_peft_repo_is_pulled_and_checked_against_the_base(
    hub: HubEnv,
    tmp_path: Path,
    tiny_base_dir: Path,
    other_tiny_base_dir: Path,
    lora_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A plain PEFT repo (no manifest): shapes decide, a different base name warns."""
    repo = _repo("foreign", request)
    api = HfApi(endpoint=hub.endpoint)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=lora_dir)  # exactly what PEFT saved

    same = _hub(tmp_path / "same", tiny_base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)
        pulled = same.pull(repo)
    assert pulled.version.method == "imported" and pulled.version.name == repo.split("/")[1]
    assert pulled.version.base_fingerprint == same.base_info.fingerprint

    twin = _hub(tmp_path / "twin", build_tiny_llama_folder(tmp_path / "tiny-twin", seed=5))
    with pytest.warns(BaseMismatchWarning, match="names base"):
        assert twin.pull(repo, name="foreign").created  # same shapes, another base name

    wide = _hub(tmp_path / "wide", other_tiny_base_dir)  # hidden size 96, not 64
    with pytest.raises(IncompatibleAdapterError, match="does not fit this base"):
        wide.pull(repo, name="foreign")
    assert wide.list() == []


def test_our_repo_on_another_base_is_refused_by_fingerprint(
    hub: HubEnv,
    alice: Hub,
    tmp_path: Path,
    other_tiny_base_dir: Path,
    lora_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = _repo("fp", request)
    alice.push(_register(alice, lora_dir), repo)
    other = _hub(tmp_path / "other", other_tiny_base_dir)
    with pytest.raises(IncompatibleAdapterError, match="trained on base"):
        other.pull(repo)
    assert other.list() == []


def test_file_edited_after_push_is_caught_by_the_manifest(
    hub: HubEnv,
    alice: Hub,
    bob: Hub,
    lora_dir: Path,
    tiny_base_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = _repo("edited", request)
    alice.push(_register(alice, lora_dir), repo)
    other = make_lora_folder(tiny_base_dir, tmp_path / "other-lora", seed=11)
    HfApi(endpoint=hub.endpoint).upload_file(
        path_or_fileobj=other / WEIGHTS_FILE, path_in_repo=WEIGHTS_FILE, repo_id=repo
    )
    with pytest.raises(CorruptBlobError, match="does not match the sha256"):
        bob.pull(repo)
    assert bob.pull(repo, revision="v1").created  # the tagged commit is intact


def test_pushed_repo_loads_in_plain_peft_with_the_same_logits(
    hub: HubEnv, alice: Hub, lora_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A fresh Python process loads the repo with PEFT straight from the Hub (HF_ENDPOINT) and
    agrees with our batching engine (greedy tokens) and our PEFT path (logits)."""
    import torch

    from adapterhub.engine import Engine, GenerationRequest, SamplingParams
    from adapterhub.engine.simple import ReferencePath

    repo = _repo("peft", request)
    ref = _register(alice, lora_dir)
    alice.push(ref, repo)
    ids = alice.base.render_chat([{"role": "user", "content": PROMPT}])
    out = tmp_path / "logits.pt"
    script = (
        "import sys, torch\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
        "model = PeftModel.from_pretrained(base, sys.argv[2], revision='v1').eval()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[2], revision='v1')\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': sys.argv[4]}],\n"
        "    add_generation_prompt=True, tokenize=True, return_dict=True)['input_ids']\n"
        "seq = list(ids)\n"
        "with torch.no_grad():\n"
        "    logits = model(torch.tensor([ids])).logits\n"
        "    for _ in range(8):  # plain greedy, eos included, as the engine with ignore_eos\n"
        "        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))\n"
        "torch.save({'ids': list(ids), 'logits': logits, 'greedy': seq[len(ids):]}, sys.argv[3])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(alice.base_info.path), repo, str(out), PROMPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(out)
    assert theirs["ids"] == ids  # the pushed tokenizer renders the same chat template

    greedy = SamplingParams(max_tokens=8, ignore_eos=True)
    with Engine(alice.base, alice.registry) as engine:
        result = engine.generate(GenerationRequest(tuple(ids), adapter=ref, sampling=greedy))
        plain = engine.generate(GenerationRequest(tuple(ids), sampling=greedy))
    assert list(result.token_ids) == theirs["greedy"]
    assert list(plain.token_ids) != theirs["greedy"]  # the adapter changes the answer

    with ReferencePath(alice.base, alice.registry).activated(ref) as model, torch.no_grad():
        ours = model(torch.tensor([ids])).logits
    torch.testing.assert_close(theirs["logits"], ours, rtol=1e-5, atol=1e-5)


def test_card_names_a_hub_base_and_passes_the_hub_metadata_check(
    hub: HubEnv, alice: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    """With a base that came from the Hub, the card and config name it by its Hub id."""
    from dataclasses import replace

    from huggingface_hub import ModelCard

    from adapterhub.hfhub import HubSettings, push_version

    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    base = replace(alice.base_info, name=hub_id, source=f"hub:{hub_id}")
    ref = _register(alice, lora_dir, dataset="HuggingFaceH4/no_robots")
    repo = _repo("card", request)
    push_version(alice.registry, ref, repo, base=base, settings=HubSettings.resolve())
    card = ModelCard(_read(hub, repo, "README.md").decode())
    assert card.data.base_model == hub_id
    assert card.data.datasets == ["HuggingFaceH4/no_robots"]
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert f'AutoModelForCausalLM.from_pretrained("{hub_id}")' in card.text
    assert json.loads(_read(hub, repo, CONFIG_FILE))["base_model_name_or_path"] == hub_id


def test_cli_push_and_pull(
    hub: HubEnv,
    alice: Hub,
    bob: Hub,
    lora_dir: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from adapterhub.cli import main

    _register(alice, lora_dir)
    repo = _repo("cli", request)
    main(["push", "pirate@1", repo, "--private", "--home", str(alice.home)])
    assert f"pushed {repo}@v1" in capsys.readouterr().out
    main(["push", "pirate@1", repo, "--home", str(alice.home), "--endpoint", hub.endpoint])
    assert "already on the Hub" in capsys.readouterr().out
    main(["pull", f"{repo}@v1", "--name", "parrot", "--home", str(bob.home)])
    assert capsys.readouterr().out.strip() == "parrot@1"
    assert bob.resolve("parrot@1").source["hub"] == repo
    with pytest.raises(SystemExit) as exit_info:
        main(["pull", f"{repo}@v42", "--home", str(bob.home)])
    assert exit_info.value.code == 1
    assert "revision 'v42' does not exist" in capsys.readouterr().err


def test_endpoint_argument_wins_over_the_environment(
    hub: HubEnv,
    alice: Hub,
    lora_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    repo = _repo("endpoint", request)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(Exception, match="cannot reach the Hub") as info:
        alice.push(_register(alice, lora_dir), repo)
    assert type(info.value).__name__ == "HubError"
    assert alice.push("pirate@1", repo, endpoint=hub.endpoint).created
    with pytest.raises(ConfigError, match="not an http"):
        alice.pull(repo, endpoint="ftp://example.org")


def test_token_from_the_login_file(
    hub: HubEnv,
    alice: Hub,
    lora_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Without HF_TOKEN, the token saved by `hf auth login` is used."""
    from huggingface_hub import constants

    token_file = tmp_path / "hf-token"
    token_file.write_text("hf_alice_write")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    repo = _repo("login", request)
    assert alice.push(_register(alice, lora_dir), repo).created
    token_file.unlink()
    with pytest.raises(HubAuthError):
        alice.push("pirate@1", _repo("nologin", request))


def test_evaluations_travel_with_a_push_in_the_card_and_manifest(
    hub: HubEnv, alice: Hub, bob: Hub, lora_dir: Path, request: pytest.FixtureRequest
) -> None:
    from huggingface_hub import ModelCard

    from adapterhub.registry import Evaluation

    ref = _register(alice, lora_dir)
    alice.registry.record_evaluations([
        Evaluation("pirate", 1, "adapterhub_capitals", "acc", 0.25, stderr=0.13, samples=12, harness="lm-eval 0.4.13"),
        Evaluation("pirate", 1, "adapterhub_capitals", "acc", 0.5, stderr=0.15, samples=12, harness="lm-eval 0.4.13"),
    ])
    repo = _repo("evals", request)
    alice.push(ref, repo)

    card = ModelCard(_read(hub, repo, "README.md").decode())  # huggingface_hub parses the model-index
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("adapterhub_capitals", "acc", 0.5)
    assert result.verified is False
    assert "| adapterhub_capitals | acc | 0.5 | 0.15 | 12 | lm-eval 0.4.13 |" in card.text

    pulled = bob.pull(repo).version
    (recorded,) = bob.registry.evaluations(pulled)
    assert (recorded.subject, recorded.value, recorded.stderr) == ("adapterhub_capitals:acc", 0.5, 0.15)
    assert recorded.setup["measured_on"] == "pirate@1"
