package exitcode

// Failure is why a cell failed, as its manifest's failure.kind records it: the one list of
// failure kinds. pkg/launcher classifies a server's log into some of them, pkg/cell and
// pkg/matrix record the others; pkg/cell maps a cell's outcome onto the table of Kinds.
type Failure string

// The failure kinds (docs/DESIGN.md "failure kinds").
const (
	FailOOM           Failure = "oom"            // the GPU ran out of memory (the cell is infeasible)
	FailCrash         Failure = "crash"          // the server died
	FailHealthTimeout Failure = "health_timeout" // the server never became ready
	FailPortInUse     Failure = "port_in_use"    // the server's port was taken
	FailEnvMissing    Failure = "env_missing"    // the conda env or something in it is missing
	FailGPUBusy       Failure = "gpu_busy"       // the GPUs were not idle before launch
	FailClientError   Failure = "client_error"   // the bench client failed
	FailBadResult     Failure = "bad_result"     // the bench ran but its result is invalid
	FailOrphans       Failure = "orphans"        // teardown left a process, the port or GPU memory behind
	FailInterrupted   Failure = "interrupted"    // SIGINT, SIGTERM or SIGHUP; the server was torn down
	FailTimeout       Failure = "timeout"        // matrix run: the cell ran past its time limit
	FailConfig        Failure = "config"         // matrix run: the cell's pipeline config could not be built
	FailMissingFile   Failure = "missing_file"   // a file the manifest names is not in the cell directory at the end
	FailManifestWrite Failure = "manifest_write" // the final manifest could not be written (disk full, read-only, permissions)
	FailServerLacks   Failure = "server_lacks"   // the server does not serve an endpoint the client needs (/tokenize, /detokenize)
)
