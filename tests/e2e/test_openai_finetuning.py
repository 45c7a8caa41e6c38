"""The mock's fine-tuning API as the official OpenAI SDK sees it: `fungible tune` is tested
against this mock, so the mock must speak what the SDK (and so OpenAI) speaks: files,
jobs through their lifecycle, events, cancel, and errors."""

import json
import urllib.error
import urllib.request

import openai
import pytest


def sdk(mock_url, key="sk-e2e-tuning"):
    return openai.OpenAI(base_url=f"{mock_url}/v1", api_key=key, max_retries=0, timeout=30)


def training_file():
    rows = [
        {"messages": [{"role": "user", "content": f"{i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(12)
    ]
    return ("train.jsonl", "\n".join(json.dumps(r) for r in rows).encode())


def test_a_job_runs_through_its_lifecycle(mock_url):
    client = sdk(mock_url)
    uploaded = client.files.create(file=training_file(), purpose="fine-tune")
    assert uploaded.id.startswith("file-")
    assert (uploaded.purpose, uploaded.filename, uploaded.object) == ("fine-tune", "train.jsonl", "file")

    job = client.fine_tuning.jobs.create(model="gpt-4.1-mini-2025-04-14", training_file=uploaded.id, suffix="e2e")
    assert job.status == "validating_files"
    assert job.fine_tuned_model is None
    seen = [job.status]
    for _ in range(10):  # one step per read; bounded
        job = client.fine_tuning.jobs.retrieve(job.id)
        seen.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
    assert seen == ["validating_files", "queued", "running", "succeeded"]
    assert job.fine_tuned_model.startswith("ft:gpt-4.1-mini-2025-04-14:fungible-mock:e2e:")
    assert job.trained_tokens > 0

    events = client.fine_tuning.jobs.list_events(job.id, limit=50)
    metrics = [e for e in events.data if e.type == "metrics"]
    assert metrics and all(e.object == "fine_tuning.job.event" for e in events.data)
    assert events.data[0].created_at >= events.data[-1].created_at, "newest first"


def test_cancel_failures_and_errors(mock_url):
    client = sdk(mock_url)
    uploaded = client.files.create(file=training_file(), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4.1-nano-2025-04-14", training_file=uploaded.id)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)

    failing = client.fine_tuning.jobs.create(model="gpt-4.1-nano-2025-04-14", training_file=uploaded.id, suffix="will-fail")
    for _ in range(10):
        failing = client.fine_tuning.jobs.retrieve(failing.id)
        if failing.status in ("succeeded", "failed"):
            break
    assert failing.status == "failed"
    assert failing.error.code == "invalid_training_file"

    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="gpt-4.1-nano-2025-04-14", training_file="file-missing")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    # Without a key: 401 in OpenAI's error shape (the SDK itself never sends a blank key).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{mock_url}/v1/fine_tuning/jobs/ftjob-missing", timeout=30)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["type"] == "invalid_api_key"
