package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
)

// ErrNotFound is wrapped by Command's error when the program is not on PATH, and by
// Start's when the program does not exist (not on the environment's PATH, or no such file).
var ErrNotFound = errors.New("command not found")

// Output is what a finished short-lived command printed and how it exited.
type Output struct {
	Stdout, Stderr string
	// ExitCode is the command's exit status (-1 when it was killed by a signal).
	ExitCode int
}

// Command runs a short-lived client to completion (Slurm's sbatch, squeue, scancel: the
// commands moecapd asks other systems things through) and returns its output. argv[0] is
// looked up on PATH; the rest are its arguments, as they are, never through a shell. env nil
// inherits this process's environment. A command that ran and exited non-zero is no error:
// its Output says how it exited. ctx ending kills it.
func Command(ctx context.Context, argv, env []string) (Output, error) {
	if len(argv) == 0 {
		return Output{}, errors.New("command: empty argv")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return Output{}, fmt.Errorf("%w: %s is not on PATH", ErrNotFound, argv[0])
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	o := Output{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return o, nil
	case ctx.Err() != nil:
		return o, fmt.Errorf("%s: %w", argv[0], ctx.Err())
	case errors.As(err, &ee):
		o.ExitCode = ee.ExitCode()
		return o, nil
	}
	return o, fmt.Errorf("run %s: %w", argv[0], err)
}
