// Command moecapd supervises MoE inference servers and benchmarks them, one matrix cell at
// a time. This package is the only place that knows about flags, environment variables and
// viper; the packages under pkg/ get plain config structs.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func usageErrorf(format string, a ...any) error { return exitcode.Usagef(format, a...) }

// subcommands are added by the files of this package, one command each.
var subcommands []func() *cobra.Command

func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "moecapd",
		Short:         "Supervisor and benchmark orchestrator for MoE inference (MoE-CAP on SGLang/vLLM)",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().String("log-format", "auto", "log format: auto (console on a terminal, JSON otherwise), console, json")
	// Not --config-file: `moecapd bench` takes the MoE-CAP runner's --config-file.
	root.PersistentFlags().String("settings", "", "moecapd settings file: keys are flag names (default ./moecapd.yaml when present)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%v (see moecapd %s --help)", err, c.Name())
	})
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}

// settings and bindFlags (flag > MOECAP_* env > moecapd.yaml > default, strictly typed)
// live in settings.go.

// commandLogger is every command's start: the merged settings, then the logger they ask for.
func commandLogger(cmd *cobra.Command) (*viper.Viper, *zap.Logger, error) {
	v, err := settings(cmd)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(v)
	if err != nil {
		return nil, nil, err
	}
	return v, log, nil
}

func newLogger(v *viper.Viper) (*zap.Logger, error) {
	return app.NewLogger(v.GetString("log-level"), v.GetString("log-format"))
}

func main() {
	root := newRootCmd()
	// The runner takes --datasets/--metrics as space-separated lists (argparse nargs);
	// pflag does not, so bench's argv is rewritten into repeated flags first (bench.go).
	root.SetArgs(expandRunnerLists(os.Args[1:]))
	err := root.Execute()
	if err == nil {
		os.Exit(int(exitcode.OK))
	}
	code := exitcode.Of(err)
	var ee *exitcode.Error
	if !errors.As(err, &ee) && (strings.Contains(err.Error(), "unknown command") || strings.Contains(err.Error(), "arg(s)")) {
		code = int(exitcode.Usage)
	}
	fmt.Fprintln(os.Stderr, "moecapd:", err)
	os.Exit(code)
}
