// Package fleet runs vmscope over a fleet of images as one task of a
// scheduler that already exists (a Kubernetes Indexed Job or CronJob,
// Slurm, a systemd timer, GNU parallel): vmscope ships no scheduler.
//
// Promises:
//
//   - An [Inventory] (NDJSON, CSV or lines of paths; [Glob]; [Libvirt]
//     domain XML files) names each image by an id that is safe as a file
//     name and unique: a duplicate or unsafe id is refused when the
//     inventory is read, a missing image is a per-image error at scan time.
//   - Sharding ([Shard], [Plan]) is rendezvous hashing of the id:
//     deterministic, every id in exactly one shard, and adding an id moves
//     only that id. [BalanceSize] assigns by allocated bytes instead
//     (greedy, largest first) for skewed fleets; it is deterministic for
//     one inventory and its sizes, and adding an image may move others.
//   - [Scan] takes, for each image of its shard, DIR/<id>.lock (flock,
//     holding host, pid, run id and start), polls DIR/<id>.state (the poll
//     state of package dirty/state), scans, commits the state and only then
//     writes OUT/<run>/<id>.ndjson (temporary file and rename). A second
//     poller of the same image waits at most the lock wait, then reports the
//     image skipped; the kernel releases a killed holder's lock. A re-run
//     with the same run id skips the images whose result is complete.
//   - A base image shared by overlays is scanned once per rules digest
//     (keyed by [LayerID], a digest of the layer's metadata, not its path);
//     its overlays reuse its verdicts and scan only what they changed.
//   - Every result line carries run_id, image_id, shard and type; any
//     concatenation of result files is the fleet's result, and [Report]
//     sorts it and adds the summary.
//
// The library logs nothing: outcomes are returned to the caller.
package fleet
