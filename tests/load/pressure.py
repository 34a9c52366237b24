"""Overload and soak driver (Python standard library only): open-loop POST /classify at a fixed
rate, one connection per request, against a running `mobilenet-serve serve`, sampling the
server's RSS from /proc. A measurement, not a test: it prints figures and writes JSON.

  overload: measure capacity closed-loop, offer 5x that rate, then check that the service
            recovers at once (every request of 2 clients in the next 3 s answered 200; exit 1
            otherwise).
  soak:     offer a fraction of capacity (default 70 %) for a long time, RSS every 10 s; report
            the drift.

Usage (tests/load/pressure.sh starts the server):
  python3 pressure.py overload --url http://127.0.0.1:8000 --pid PID --image FILE --model NAME
  python3 pressure.py soak --url ... --pid PID --image FILE --model NAME --seconds 600
"""
import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def post(host, port, path, body, timeout):
    """One request on a fresh connection: (status or an error name, seconds)."""
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(line.split()[1]) if line else "closed"
        await asyncio.wait_for(reader.read(), timeout)
    except asyncio.TimeoutError:
        status = "client_timeout"
    except (ConnectionError, OSError) as e:
        status = type(e).__name__
    finally:
        if writer is not None:
            writer.close()
    return status, time.perf_counter() - started


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def summary(results):
    by_status = {}
    for status, seconds in results:
        by_status.setdefault(str(status), []).append(seconds * 1000)
    return {s: {"count": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "max_ms": max(ms)} for s, ms in sorted(by_status.items())}


async def closed_loop(target, concurrency, seconds):
    results = []
    deadline = time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < deadline:
            results.append(await post(*target))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def open_loop(target, rate, seconds, pid, sample_every, on_sample=None):
    """Requests at `rate` per second regardless of answers; RSS sampled every `sample_every`."""
    results, samples, tasks = [], [], []
    started = time.perf_counter()
    next_sample = 0.0
    i = 0

    async def one():
        results.append(await post(*target))

    while True:
        now = time.perf_counter() - started
        if now >= seconds:
            break
        if now >= next_sample:
            samples.append((round(now, 1), rss_mib(pid)))
            if on_sample:
                on_sample(samples[-1], results)
            next_sample += sample_every
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
        i += 1
    await asyncio.gather(*tasks)
    samples.append((round(time.perf_counter() - started, 1), rss_mib(pid)))
    return results, samples


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["overload", "soak"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's pid, for its RSS")
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--factor", type=float, default=None,
                        help="offered load / capacity (overload 5, soak 0.7)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    url = urlsplit(args.url)
    body = open(args.image, "rb").read()
    target = (url.hostname, url.port, f"/classify?model={args.model}&top_k=1", body, args.timeout)

    warm = await closed_loop(target, 4, 3)
    ok = [s for s, _ in warm if s == 200]
    capacity = len(ok) / 3
    print(f"capacity (closed loop, 4 clients, 3 s): {capacity:.0f} req/s, "
          f"RSS {rss_mib(args.pid):.0f} MiB")
    report = {"mode": args.mode, "model": args.model, "capacity_rps": capacity}

    if args.mode == "overload":
        factor = args.factor or 5.0
        seconds = args.seconds or 20.0
        rate = capacity * factor
        print(f"offering {rate:.0f} req/s ({factor:g}x) for {seconds:g} s")
        results, samples = await open_loop(target, rate, seconds, args.pid, 1.0)
        report["overload"] = {"offered_rps": rate, "seconds": seconds, "by_status": summary(results),
                              "rss_mib": samples}
        after = await closed_loop(target, 2, 3)
        report["recovery"] = {"by_status": summary(after)}
        for name in ("overload", "recovery"):
            print(f"{name}:")
            for status, s in report[name]["by_status"].items():
                print(f"  {status:>14}: {s['count']:6d}  p50 {s['p50_ms']:8.2f} ms  "
                      f"p99 {s['p99_ms']:8.2f} ms  max {s['max_ms']:8.2f} ms")
        rss = [r for _, r in samples]
        print(f"RSS during overload: start {rss[0]:.0f} MiB, max {max(rss):.0f} MiB, "
              f"end {rss[-1]:.0f} MiB")
        failed = [s for s, _ in after if s != 200]
        if failed:
            print(f"NOT RECOVERED: {len(failed)} of {len(after)} requests after the overload "
                  f"were not answered 200")
            raise SystemExit(1)
        print(f"recovered: all {len(after)} requests right after the overload answered 200")
    else:
        factor = args.factor or 0.7
        seconds = args.seconds or 600.0
        rate = capacity * factor

        def progress(sample, results):
            done = len(results)
            errors = sum(1 for s, _ in results if s != 200)
            print(f"  t={sample[0]:6.1f} s  RSS {sample[1]:7.1f} MiB  answered {done}  "
                  f"not 200: {errors}", flush=True)

        print(f"offering {rate:.0f} req/s ({factor:g}x) for {seconds:g} s")
        results, samples = await open_loop(target, rate, seconds, args.pid, 10.0, progress)
        rss = [r for _, r in samples]
        # Drift: the last minute's mean against the mean of the first minute after warm-up.
        first = [r for t, r in samples if 10 <= t <= 70] or rss[:1]
        last = [r for t, r in samples if t >= samples[-1][0] - 60] or rss[-1:]
        report["soak"] = {"offered_rps": rate, "seconds": seconds, "by_status": summary(results),
                          "rss_mib": samples,
                          "drift_mib": statistics.mean(last) - statistics.mean(first)}
        for status, s in report["soak"]["by_status"].items():
            print(f"  {status:>14}: {s['count']:7d}  p50 {s['p50_ms']:8.2f} ms  "
                  f"p99 {s['p99_ms']:8.2f} ms")
        print(f"RSS: first minute {statistics.mean(first):.1f} MiB, last minute "
              f"{statistics.mean(last):.1f} MiB, drift {report['soak']['drift_mib']:+.1f} MiB, "
              f"max {max(rss):.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
