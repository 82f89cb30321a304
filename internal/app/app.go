// Package app is moecapd's orchestration layer: launch-and-bench, matrix plan/run/status,
// Slurm submit/task/status/cancel, report and bench, each a function of a typed request.
// cmd/moecapd reads flags and settings into those requests, calls this package, renders,
// and turns the returned error into an exit code once (pkg/exitcode). Only cmd/ imports it
// (.golangci.yml), so a second front end is one more caller, not a second copy.
package app

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// NewLogger is the logger --log-level and --log-format ask for: console on a terminal
// (format auto), JSON otherwise.
func NewLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(level); err != nil {
		return nil, exitcode.Usagef("--log-level %q: want debug, info, warn or error", level)
	}
	if format == "auto" {
		format = "json"
		if term.IsTerminal(int(os.Stderr.Fd())) {
			format = "console"
		}
	}
	switch format {
	case "console":
		return zap.New(zapcore.NewCore(NewHumanEncoder(), zapcore.Lock(os.Stderr), lvl)), nil
	case "json":
		cfg := zap.NewProductionConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		cfg.Sampling = nil
		cfg.DisableStacktrace = true // a failed cell is the user's news, not a bug's trace
		cfg.Level = zap.NewAtomicLevelAt(lvl)
		cfg.OutputPaths = []string{"stderr"}
		return cfg.Build()
	default:
		return nil, exitcode.Usagef("--log-format %q: want auto, console or json", format)
	}
}
