#!/usr/bin/env python3
"""Load on `diffuse serve`: N concurrent clients for S seconds, each sending one request after another.

Every answer must be 200 (served) or 429 (queue full, with Retry-After); anything else, or a lost
connection, is counted as failed. Prints throughput, p50/p99 latency of the served requests and the
server's resident memory at the start and the end, and from /metrics how many jobs ran in batched
sampling runs (start the server with --max-batch 1 to measure one job at a time).

    python3 Scripts/serve-load.py --url http://127.0.0.1:7860 --pid PID [--clients 32] [--seconds 60] \
        [--route openai|a1111|jobs] [--steps 2] [--model NAME]
Standard library only.
"""
import argparse, http.client, json, threading, time, urllib.parse


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric_values(url, names):
    """The values of the named counters in the server's /metrics (0 when absent)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    values = {name: 0.0 for name in names}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] in values:
            values[fields[0]] = float(fields[1])
    return values


BATCH_COUNTERS = ["diffuse_batched_runs_total", "diffuse_batched_jobs_total", "diffuse_batched_images_total", "diffuse_jobs_total{state=\"succeeded\"}"]


def request_for(route, steps, model=None):
    if route == "openai":
        return "/v1/images/generations", {"prompt": "a lighthouse at dusk", "n": 1, "size": "64x64", "response_format": "b64_json"}
    if route == "a1111":
        return "/sdapi/v1/txt2img", {"prompt": "a lighthouse at dusk", "steps": steps, "width": 64, "height": 64, "seed": -1}
    body = {"steps": steps, "count": 1, "seed": -1, "preview_every": 0}
    if model:
        body["model"] = model
    return "/api/v1/jobs", body


def client(url, route, steps, model, deadline, results, lock):
    parts = urllib.parse.urlsplit(url)
    path, body = request_for(route, steps, model)
    payload = json.dumps(body)
    connection = None
    while time.time() < deadline:
        start = time.time()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
            connection.request("POST", path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            status = response.status
            if route == "jobs" and status == 202:
                job = json.loads(data)["job"]["id"]
                connection.request("GET", f"/api/v1/jobs/{job}/events")
                events = connection.getresponse()
                text = events.read().decode()
                status = 200 if "event: succeeded" in text else 500
            elapsed = time.time() - start
            with lock:
                if status == 200:
                    results["served"].append(elapsed)
                elif status == 429:
                    results["rejected"] += 1
                    retry = response.getheader("Retry-After")
                    if retry is None:
                        results["failed"] += 1
                else:
                    results["failed"] += 1
                    results["statuses"][status] = results["statuses"].get(status, 0) + 1
            if status == 429:
                time.sleep(0.05)
        except Exception as error:  # a lost connection
            with lock:
                results["failed"] += 1
                results["errors"].append(repr(error))
            connection = None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--route", default="openai", choices=["openai", "a1111", "jobs"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", help="the model of /api/v1/jobs requests (default: the server's first)")
    arguments = parser.parse_args()
    results = {"served": [], "rejected": 0, "failed": 0, "statuses": {}, "errors": []}
    lock = threading.Lock()
    rss_start = rss_kib(arguments.pid)
    counters_start = metric_values(arguments.url, BATCH_COUNTERS)
    deadline = time.time() + arguments.seconds
    threads = [threading.Thread(target=client, args=(arguments.url, arguments.route, arguments.steps, arguments.model, deadline, results, lock))
               for _ in range(arguments.clients)]
    began = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.time() - began
    rss_end = rss_kib(arguments.pid)
    counters = {name: value - counters_start[name] for name, value in metric_values(arguments.url, BATCH_COUNTERS).items()}
    served = sorted(results["served"])
    percentile = lambda p: served[min(len(served) - 1, int(p * len(served)))] if served else float("nan")
    print(f"route {arguments.route}, {arguments.clients} clients, {wall:.1f} s")
    print(f"served {len(served)} ({len(served) / wall:.2f}/s), rejected 429 {results['rejected']}, failed {results['failed']} {results['statuses']}")
    print(f"latency of served: p50 {percentile(0.5) * 1000:.0f} ms, p99 {percentile(0.99) * 1000:.0f} ms")
    print(f"server RSS: start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB")
    runs, jobs, images = (counters[name] for name in BATCH_COUNTERS[:3])
    succeeded = counters[BATCH_COUNTERS[3]]
    print(f"batched: {jobs:.0f} of {succeeded:.0f} succeeded jobs in {runs:.0f} batched runs "
          f"({images / runs if runs else 0:.2f} images per batched run)")
    if results["errors"]:
        print("errors:", results["errors"][:5])


if __name__ == "__main__":
    main()
