// Command moecapd supervises MoE inference servers and benchmarks them, one matrix cell at
// a time. This package is the only place that knows about flags, environment variables and
// viper; the packages under pkg/ get plain config structs.
package main

import (
	"errors"
	"fmt"
	"github.com/moecapd/moecapd/internal/settings"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/config"
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
		// An unknown flag is answered with ours: a server's spelling of one of our flags
		// (--tensor-parallel-size, --tp-size → --tp) or the nearest of this command's flags.
		var ne *pflag.NotExistError
		if errors.As(err, &ne) {
			var known []string
			c.Flags().VisitAll(func(f *pflag.Flag) { known = append(known, f.Name) })
			if hint := config.FlagHint(ne.GetSpecifiedName(), known); hint != "" {
				return usageErrorf("%v: %s (see moecapd %s --help)", err, hint, c.Name())
			}
		}
		return usageErrorf("%v (see moecapd %s --help)", err, c.Name())
	})
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	// An unknown command or wrong arguments are usage errors (exit 2), classified where
	// they are found rather than from cobra's error text.
	usageArgs(root)
	return root
}

// usageArgs makes every command's argument check return a usage error, and a command
// that only groups others (moecapd, matrix, slurm) refuse an unknown one.
func usageArgs(c *cobra.Command) {
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = unknownCommand
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	if check := c.Args; check != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			return exitcode.New(exitcode.Usage, check(cmd, args))
		}
	}
	for _, sub := range c.Commands() {
		usageArgs(sub)
	}
}

// settings and bindFlags (flag > MOECAP_* env > moecapd.yaml > default, strictly typed)
// live in settings.go.

// commandLogger is every command's start: the merged settings, then the logger they ask for.
func commandLogger(cmd *cobra.Command) (*viper.Viper, *zap.Logger, error) {
	v, err := settings.Load(cmd)
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
	fmt.Fprintln(os.Stderr, "moecapd:", err)
	os.Exit(exitcode.Of(err))
}

// unknownCommand is the argument check of a command that groups others: any argument is a
// command it does not have.
func unknownCommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return errors.New(msg)
}
