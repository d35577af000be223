"""Targets, the printed table and the optional latency plot for bench.py results."""

MIB = 1 << 20

# Targets to report against (not assertions): (key, description).
TARGET_DISK_FRACTION = 0.5
TARGET_P99_MS = 10.0
TARGET_IDLE_RSS_MIB = 64.0


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _f(value, spec, suffix="", missing="-"):
    if value is None:  # keep the column: pad to the spec's width
        width = len(spec) - len(spec.lstrip("0123456789"))
        return f"{missing:>{int(spec[:width]) + len(suffix)}}" if width else missing
    return f"{value:{spec}}{suffix}"


def _verdict(ok):
    return "-" if ok is None else ("PASS" if ok else "MISS")


def targets(results):
    """One entry per target and cluster size: figure, threshold, PASS/MISS (None when not measured)."""
    out = []
    disk = results.get("machine_limits", {}).get("disk_fsync_MBps_run_mean")
    for n, node in sorted(results.get("clusters", {}).items(), key=lambda kv: int(kv[0])):
        if node.get("status") != "measured":
            continue
        nodes = int(n)
        label = "single node" if n == "1" else f"{n}-node"
        peak = next((r for r in node.get("produce", []) if r["size"] == 1024 and r["acks"] == "all"), None)
        frac = peak.get("fraction_of_disk_fsync_bw") if peak else None
        ref = peak.get("disk_adjacent", {}).get("seq_1m_fdatasync_MBps") if peak else None
        detail = "not measured"
        if frac is not None and nodes == 1:
            detail = f"{peak['MBps']:.1f} of {ref:.1f} MB/s (probe just before) = {frac:.0%}"
            if disk:
                detail += f"; {peak['fraction_of_disk_fsync_bw_run_mean']:.0%} of the run mean {disk:.0f} MB/s"
        elif frac is not None:
            # Every node writes its own replica to the same disk: the reference is the disk / N.
            detail = (f"{peak['MBps']:.1f} of {ref:.1f}/{nodes} = {ref / nodes:.1f} MB/s (probe just before)"
                      f" = {frac:.0%}")
            if disk:
                detail += (f"; {peak['fraction_of_disk_fsync_bw_run_mean']:.0%} of the run mean"
                           f" {disk:.0f}/{nodes} MB/s")
        words = {3: "three"}.get(nodes, str(nodes))
        target = (f"{label} 1 KiB acks=all >= 50% of fsynced disk bandwidth" if nodes == 1 else
                  f"{words} nodes on one machine: 1 KiB acks=all >= 50% of fsynced bw / {words}")
        out.append({"nodes": nodes, "target": target,
                    "value": frac, "unit": "fraction", "threshold": TARGET_DISK_FRACTION,
                    "detail": detail,
                    "pass": None if frac is None else frac >= TARGET_DISK_FRACTION})
        half = next((r for r in node.get("latency", {}).get("runs", []) if r["load_fraction"] == 0.5), None)
        p99 = half["p99_ms"] if half else None
        out.append({"nodes": int(n), "target": f"{label} produce p99 < 10 ms at 50% of peak (1 KiB acks=all)",
                    "value": p99, "unit": "ms", "threshold": TARGET_P99_MS,
                    "detail": (f"p99 {p99:.2f} ms at {half['achieved_msgs_per_s']:,.0f} msg/s" if half
                               else "not measured"),
                    "pass": None if p99 is None else p99 < TARGET_P99_MS})
        if nodes == 1:
            idle = node.get("idle_rss_median_mib")
            what, detail = f"{label} idle RSS < 64 MiB", f"{idle:.1f} MiB" if idle is not None else "not measured"
        else:
            # Per process: each node is a broker of its own; the sum is in the footprint section.
            idle = node.get("idle_rss_max_node_median_mib")
            per_node = node.get("idle_rss_per_node_median_mib") or []
            what = f"{label} idle RSS < 64 MiB per node"
            detail = (f"largest node {idle:.1f} MiB (nodes " + " / ".join(_f(v, ".1f") for v in per_node)
                      + f", sum {_f(node.get('idle_rss_median_mib'), '.1f')} MiB)") if idle is not None else "not measured"
        out.append({"nodes": int(n), "target": what, "value": idle, "unit": "MiB",
                    "threshold": TARGET_IDLE_RSS_MIB, "detail": detail,
                    "pass": None if idle is None else idle < TARGET_IDLE_RSS_MIB})
    return out


def table(r, out_path):
    lines = []
    add = lines.append
    m = r.get("machine", {})
    mem = m.get("MemTotal_MiB")
    add(f"rafka benchmark   commit {r.get('commit', '?')}{' (working tree dirty)' if r.get('dirty') else ''}"
        f"   {r.get('started_at', '')}")
    add(f"machine: {m.get('nproc', '?')} CPUs ({m.get('cpu', '?')}), "
        f"{mem / 1024:.1f} GiB RAM" if mem else "machine: ?")
    if "loadavg_at_start" in m:
        add(f"         load average at start {m['loadavg_at_start'][0]:.2f} (other work on the machine skews figures)")
    b = r.get("binary")
    if b:
        add(f"binary:  {b['path']} (modified {b['mtime']})")
    add("")

    ml = r.get("machine_limits", {})
    fs = ml.get("data_fs", {})
    disk = ml.get("disk", {})
    lo = ml.get("loopback", {})
    add(f"MACHINE LIMITS (data dir filesystem: {fs.get('mount', '?')} {fs.get('fstype', '')} {fs.get('device', '')})")
    end = ml.get("disk_end", {})
    add(f"  disk, 1 MiB append + fdatasync      {_f(disk.get('seq_1m_fdatasync_MBps'), '8.1f', ' MB/s')} at start,"
        f" {_f(end.get('seq_1m_fdatasync_MBps'), '.1f', ' MB/s')} at end;"
        f" mean {_f(ml.get('disk_fsync_MBps_run_mean'), '.1f', ' MB/s')}")
    for label, d in (("start", disk), ("end", end)):
        if d:
            add(f"  disk, 4 KiB append + fdatasync      {_f(d.get('w4k_fdatasync_per_s'), '8.0f', ' /s')} at {label:<5}"
                f"  (p50 {_f(d.get('w4k_fdatasync_p50_ms'), '.2f')} ms, p99 {_f(d.get('w4k_fdatasync_p99_ms'), '.2f')} ms)")
    add(f"  loopback TCP, 1 stream              {_f(lo.get('MBps'), '8.1f', ' MB/s')}")
    spread = ml.get("disk_fsync_MBps_spread")
    if spread and spread[0] > 0:
        add(f"  1 MiB fdatasync bandwidth over every probe of this run: {spread[0]:.0f}-{spread[1]:.0f} MB/s"
            + (f" ({spread[1] / spread[0]:.1f}x apart: the disk is shared, compare runs with their own probe)"
               if spread[1] > 1.5 * spread[0] else ""))
    add("")

    for n, node in sorted(r.get("clusters", {}).items()):
        if node.get("status") != "measured":
            add(node.get("status", f"{n}-node: not available yet"))
            add("")
            continue
        if n == "1":
            add("SINGLE NODE")
        else:
            c = node.get("config", {})
            add(f"{n} NODES (one Raft cluster of {n} processes on this machine, every topic replication factor"
                f" {c.get('default_replication_factor', n)}, {c.get('default_partitions', '?')} partition(s) as the single"
                f" node; clients bootstrap from all {n})")
            if c.get("rtt_millis"):
                add(f"  raft timing: rtt_millis {c['rtt_millis']}, heartbeat every {c['heartbeat_rtt']} rtt"
                    f" ({c['rtt_millis'] * c['heartbeat_rtt']} ms; openraft also bounds each peer RPC by it),"
                    f" election after {c['election_rtt']} rtt")
        _produce_section(node, r.get("args", {}), add)
        _large_topic_section(node, add)
        _latency_section(node, r.get("args", {}), add)
        _footprint_section(node, add)
        _log_events_section(node, add)
        add("")

    add("TARGETS (reported, not asserted)")
    for t in r.get("targets", []):
        add(f"  {_verdict(t['pass']):4}  {t['target']:<72} {t['detail']}")
    if not r.get("targets"):
        add("  (nothing measured)")
    add("")
    if r.get("errors"):
        add("ERRORS / SKIPPED")
        for e in r["errors"]:
            add(f"  {e}")
        add("")
    add(f"results: {out_path}   run time {r.get('runtime_s', 0):.0f} s")
    return "\n".join(lines)


def _produce_section(node, args, add):
    nodes = node.get("nodes", 1)
    many = nodes > 1
    add(f"  PRODUCE THROUGHPUT (1 librdkafka producer, linger.ms={args.get('linger_ms')}, "
        f"batch.size={args.get('batch_size')}, {args.get('produce_seconds')} s per run, "
        f"{'fresh cluster' if many else 'fresh broker'} each)")
    head = "    size   acks        msg/s      MB/s  disk bw then"
    if many:
        head += f"  bw/{nodes}"
    head += "  fraction"
    if many:
        head += "  vs 1 node  leader"
    head += "  reqs/s  msgs/req  broker CPU  client CPU  disk writes/payload"
    add(head)
    for p in node.get("produce", []):
        cs = p.get("client_stats", {})
        line = (f"    {_size(p['size']):>6} {p['acks']:>4} {p['msgs_per_s']:>12,.0f} {p['MBps']:>9.1f}"
                f" {_f(p.get('disk_adjacent', {}).get('seq_1m_fdatasync_MBps'), '13.0f')}")
        if many:
            line += f" {_f(p.get('disk_share_MBps'), '6.0f')}"
        line += f" {_f(p.get('fraction_of_disk_fsync_bw'), '9.0%')}"
        if many:
            line += f" {_f(p.get('fraction_of_single_node'), '10.0%')} {_f(p.get('leader_node'), '7d')}"
        line += (f" {_f(cs.get('produce_requests_per_s'), '7.0f')} {_f(cs.get('batch_msgs_avg'), '9.0f')}"
                 f" {_f(p.get('broker_cpu_pct'), '10.0f', '%')} {_f(p.get('client_cpu_pct'), '10.0f', '%')}"
                 f" {_f(p.get('write_amplification'), '19.1f', 'x')}")
        add(line)
    if not node.get("produce"):
        add("    (not measured)")
    if many and node.get("produce"):
        add("    replicas of each run's partition: " + "; ".join(
            f"{_size(p['size'])} acks={p['acks']}: {_ids(p.get('replicas'))} (ISR after the run {_ids(p.get('isr_after'))})"
            for p in node["produce"]))
    if many:
        add(f"    (disk bw then = 1 MiB append+fdatasync MB/s probed just before the run; the {nodes} replicas share"
            f" that disk, so fraction = MB/s of bw/{nodes};")
        add("     vs 1 node = MB/s of the single-node run with the same size and acks; leader = node leading the"
            " topic's partition;")
        add(f"     broker CPU summed over the {nodes} nodes, in % of one core, both cores = 200%; disk writes = bytes"
            f" all {nodes} nodes wrote per payload byte;")
        add("     reqs/s, msgs/req from librdkafka statistics)")
    else:
        add("    (disk bw then = 1 MiB append+fdatasync MB/s probed just before the run, fraction = MB/s of it;"
            " CPU in % of one core, both cores = 200%;")
        add("     disk writes = bytes the broker wrote (/proc/<pid>/io) per payload byte; reqs/s, msgs/req from"
            " librdkafka statistics)")


def _large_topic_section(node, add):
    lt = node.get("large_topic", {})
    many = node.get("nodes", 1) > 1
    add("")
    add(f"  CONSUME (plain assign() consumer from offset 0, 1 KiB messages): "
        f"{fmt_bytes(lt.get('bytes'))} topic, {lt.get('size_note', 'not run')}")
    fill, cons = lt.get("fill"), lt.get("consume")
    if fill:
        add(f"    fill (produce, acks=all)   {fill['msgs_per_s']:>12,.0f} msg/s {fill['MBps']:>8.1f} MB/s"
            f"   {fill['seconds']:.1f} s, broker CPU {fill['broker_cpu_pct']:.0f}%,"
            f" disk writes {fill['write_amplification']:.1f}x payload,"
            f" data dir {fmt_bytes(lt.get('data_dir_bytes_after_fill'))}"
            + (f" (all nodes; leader node {fill.get('leader_node')})" if many else ""))
    if cons:
        add(f"    consume                    {cons['msgs_per_s']:>12,.0f} msg/s {cons['MBps']:>8.1f} MB/s"
            f"   {cons['seconds']:.1f} s, broker CPU {cons['broker_cpu_pct']:.0f}%,"
            f" client CPU {cons['client_cpu_pct']:.0f}%, first message after"
            f" {_f(cons.get('first_message_s'), '.3f')} s"
            + (f"; {_f(cons.get('fraction_of_single_node'), '.0%')} of the single node's MB/s" if many else ""))
    if not fill and not cons:
        add("    (not measured)")


def _latency_section(node, args, add):
    lat = node.get("latency", {})
    many = node.get("nodes", 1) > 1
    add("")
    add(f"  PRODUCE LATENCY (1 KiB acks=all, rate-limited, linger.ms={args.get('linger_ms')}; "
        f"client-measured produce() -> delivery report; {args.get('latency_seconds')} s after 1 s warm-up)")
    if lat.get("peak_msgs_per_s"):
        add(f"    peak from the {lat.get('peak_source', 'throughput run')}: {lat['peak_msgs_per_s']:,.0f} msg/s"
            + (f" ({_f(lat.get('peak_fraction_of_single_node'), '.0%')} of the single node's;"
               f" loads below are fractions of this {node.get('nodes')}-node peak)" if many else ""))
    add("    load   offered msg/s  achieved msg/s     p50 ms    p99 ms   p999 ms    max ms   rtt p50/p99 ms"
        "  msgs/req  disk 4K fsync p50/p99 then")
    for x in lat.get("runs", []):
        cs = x.get("client_stats", {})
        add(f"    {x['load_fraction']:>4.0%} {x['offered_msgs_per_s']:>15,.0f} {x['achieved_msgs_per_s']:>15,.0f}"
            f" {x['p50_ms']:>10.2f} {x['p99_ms']:>9.2f} {x['p999_ms']:>9.2f} {x['max_ms']:>9.2f}"
            f"   {_f(cs.get('rtt_p50_ms'), '6.2f')}/{_f(cs.get('rtt_p99_ms'), '.2f')}"
            f" {_f(cs.get('batch_msgs_avg'), '9.0f')}"
            f"  {_f(x.get('disk_adjacent', {}).get('w4k_fdatasync_p50_ms'), '11.2f')}"
            f"/{_f(x.get('disk_adjacent', {}).get('w4k_fdatasync_p99_ms'), '.2f')} ms")
    add("    (rtt = produce request round trip seen by librdkafka; the rest of a latency is linger.ms and"
        " queueing in the client)")
    if not lat.get("runs"):
        add("    (not measured)")
    lone = lat.get("lone")
    if lone:
        add(f"    one message at a time (no batching, 1 in flight): p50 {lone['p50_ms']:.2f} ms, "
            f"p99 {lone['p99_ms']:.2f} ms over {lone['samples']} messages")
    if lat.get("plot"):
        add(f"    plot: {lat['plot']}")


def _ids(ids):
    return "?" if ids is None else "[" + ",".join(str(i) for i in ids) + "]"


def _per_node(values, spec=".0f"):
    return " / ".join(_f(v, spec) for v in values) if values else "-"


def _footprint_section(node, add):
    nodes = node.get("nodes", 1)
    many = nodes > 1
    add("")
    add("  FOOTPRINT" + (f" (RSS = sum over the {nodes} nodes, then node 1 / 2 / 3)" if many else ""))
    starts = node.get("startup_fresh_s", [])
    if starts:
        what = ("startup, spawn -> first answered Metadata (empty data dir)   " if not many else
                "startup, spawn -> every node lists 3 brokers + controller   ")
        add(f"    {what}{node['startup_fresh_median_s'] * 1e3:8.0f} ms  (median of {len(starts)};"
            f" {min(starts) * 1e3:.0f}-{max(starts) * 1e3:.0f} ms)")
        detail = node.get("startup_fresh_detail")
        if detail:
            firsts = [d["first_metadata_s"] for d in detail if d.get("first_metadata_s") is not None]
            if firsts:
                add(f"      (first Metadata answered by any node: median {sorted(firsts)[len(firsts) // 2] * 1e3:.0f} ms;"
                    f" empty data dirs, all nodes spawned together)")
    if node.get("idle_rss_median_mib") is not None:
        s = node.get("idle_rss_samples", [{}])[0]
        add(f"    RSS idle after startup (+1 s)                                {node['idle_rss_median_mib']:8.1f} MiB"
            f" (median; anon {_f(s.get('anon_mib'), '.1f')}, file {_f(s.get('file_mib'), '.1f')})"
            + (f"  per node {_per_node(node.get('idle_rss_per_node_median_mib'), '.1f')} MiB" if many else ""))
    if node.get("produce_rss_peak_mib") is not None:
        worst = max(node.get("produce", []), key=lambda p: p.get("rss_peak_mib") or 0)
        add(f"    RSS peak under produce load (VmRSS sampled every 50 ms)      {node['produce_rss_peak_mib']:8.1f} MiB"
            f" (during {_size(worst['size'])} acks={worst['acks']}: anon {_f(worst.get('rss_peak_anon_mib'), '.0f')},"
            f" file {_f(worst.get('rss_peak_file_mib'), '.0f')}; VmHWM max {node['produce_vmhwm_max_mib']:.1f} MiB"
            + (" (sum of the nodes' VmHWM)" if many else "")
            + f"; RSS after the run {_f(worst.get('rss_after_mib'), '.0f')} MiB)")
        if many:
            add(f"      per node: at that peak {_per_node(worst.get('rss_at_peak_per_node_mib'))} MiB;"
                f" each node's own peak over all produce runs {_per_node(node.get('produce_rss_peak_per_node_mib'))} MiB")
    lt = node.get("large_topic", {})
    for key, label in (("fill", "RSS peak while filling the large topic"),
                       ("consume", "RSS peak while consuming it")):
        if lt.get(key):
            add(f"    {label:<61}{lt[key]['rss_peak_mib']:8.1f} MiB"
                + (f"  per node {_per_node(lt[key].get('rss_peak_per_node_mib'))} MiB" if many else ""))
    k9 = lt.get("kill9")
    if k9:
        if many:
            add(f"    recovery after kill -9 of ALL {nodes} nodes at once with {fmt_bytes(lt.get('bytes'))} on disk "
                f"(data dirs {fmt_bytes(k9.get('data_dir_bytes'))}), all restarted together:")
            add(f"      spawn -> every node lists 3 brokers + controller           {_f(k9['metadata_s'], '8.3f')} s"
                f"  (first node answering Metadata {_f(k9.get('first_metadata_s'), '.3f')} s)")
            add(f"      spawn -> first successful fetch of the last offset         {_f(k9['fetch_last_offset_s'], '8.3f')} s"
                f"  (from the partition leader: node {k9.get('fetch_leader')}, node {k9.get('leader_before')} before the kill)")
            add(f"      RSS right after recovery                                   {_f(k9.get('rss_after_recovery_mib'), '8.1f')} MiB"
                f"  per node {_per_node(k9.get('rss_after_recovery_per_node_mib'))} MiB")
        else:
            add(f"    recovery after kill -9 with {fmt_bytes(lt.get('bytes'))} on disk "
                f"(data dir {fmt_bytes(k9.get('data_dir_bytes'))}):")
            add(f"      spawn -> first answered Metadata                           {k9['metadata_s'] * 1e3:8.0f} ms")
            add(f"      spawn -> first successful fetch of the last offset         {k9['fetch_last_offset_s'] * 1e3:8.0f} ms")
            add(f"      RSS right after recovery                                   {_f(k9.get('rss_after_recovery_mib'), '8.1f')} MiB")
    g = lt.get("graceful_restart")
    if g:
        codes = g.get("exit_code")
        add(f"    graceful restart{' of all nodes' if many else ''}: SIGTERM -> exit {g['stop_s'] * 1e3:.0f} ms"
            f" (exit code{'s' if many else ''} {_per_node(codes, 'd') if isinstance(codes, list) else codes}),"
            f" spawn -> Metadata {g['metadata_s'] * 1e3:.0f} ms, -> fetch of last offset {g['fetch_last_offset_s'] * 1e3:.0f} ms")


def _log_events_section(node, add):
    """Counts of notable broker log lines per run (3-node only: they explain stalls and slow runs)."""
    if node.get("nodes", 1) == 1:
        return
    entries = node.get("broker_log_events", [])
    if not entries:
        return
    add("")
    add("  BROKER LOG EVENTS during each run, node 1/2/3 (lines in the nodes' logs; rpc timeouts ="
        " openraft 'timeout after' of AppendEntries/heartbeats to a peer)")
    add("    run                            rpc timeouts  peer conn lost    vote changed          panics     ERROR lines")
    for e in entries:
        add(f"    {e['run']:<28}" + "".join(f" {_per_node(e.get(k), 'd'):>15}" for k in
                                          ("rpc_timeouts", "peer_connection_lost", "elections", "panics", "error_lines")))


def _size(n):
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def plot_latency(runs, path, nodes=1):
    """PNG of latency percentiles vs offered load if matplotlib is installed; returns a note."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped (matplotlib not installed)"
    if len(runs) < 2:
        return "skipped (fewer than two load levels measured)"
    xs = [r["achieved_msgs_per_s"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot(xs, [r[key] for r in runs], marker="o", label=label)
    for r in runs:
        ax.annotate(f"{r['load_fraction']:.0%}", (r["achieved_msgs_per_s"], r["p50_ms"]),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.axhline(TARGET_P99_MS, color="grey", linestyle="--", linewidth=0.8, label="p99 target")
    ax.set_xlabel("offered load, 1 KiB messages/s (acks=all)")
    ax.set_ylabel("produce latency, ms")
    ax.set_yscale("log")
    ax.set_title("rafka single node: produce latency vs load" if nodes == 1 else
                 f"rafka {nodes} nodes (RF {nodes}, one machine): produce latency vs load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
