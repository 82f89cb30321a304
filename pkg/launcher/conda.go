// Package launcher resolves conda environments, builds each backend's server command line,
// and owns the life of every process moecapd starts: start in its own process group,
// readiness, stop with grace and escalation, orphan recovery, and log capture with failure
// classification. It is the only package that starts processes.
package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ActivationScript is the only shell moecapd runs. Every value (conda root, env, the server's
// argv) arrives as a positional argument, so a model id or env name with spaces, quotes, `;`
// or `$(...)` is data, not shell. `exec` makes the server keep the shell's PID, so signals
// reach it directly (conda run does not forward them, which is how servers get orphaned).
const ActivationScript = `source "$1/etc/profile.d/conda.sh" && conda activate "$2" && shift 2 && exec "$@"`

// CondaSearch is what the caller knows about where conda lives; the launcher reads no
// environment variables itself.
type CondaSearch struct {
	Flag            string // --conda-root
	CondaExe        string // $CONDA_EXE
	MambaRootPrefix string // $MAMBA_ROOT_PREFIX
	Home            string // $HOME
}

// ErrEnvMissing marks a conda root or environment that cannot be found.
var ErrEnvMissing = errors.New("conda environment missing")

// Candidates lists the conda roots to try, in DESIGN.md's order.
func (s CondaSearch) Candidates() []string {
	var c []string
	if s.Flag != "" {
		return []string{s.Flag}
	}
	if s.CondaExe != "" {
		// $CONDA_EXE is ROOT/bin/conda (or ROOT/condabin/conda).
		c = append(c, filepath.Dir(filepath.Dir(s.CondaExe)))
	}
	if s.MambaRootPrefix != "" {
		c = append(c, s.MambaRootPrefix)
	}
	if s.Home != "" {
		for _, d := range []string{"miniforge3", "miniconda3", "anaconda3"} {
			c = append(c, filepath.Join(s.Home, d))
		}
	}
	return append(c, "/opt/conda")
}

// ResolveCondaRoot returns the first candidate that has etc/profile.d/conda.sh.
func ResolveCondaRoot(s CondaSearch) (string, error) {
	cands := s.Candidates()
	for _, root := range cands {
		if fileExists(filepath.Join(root, "etc", "profile.d", "conda.sh")) {
			return root, nil
		}
	}
	if s.Flag != "" {
		return "", fmt.Errorf("%w: --conda-root %s has no etc/profile.d/conda.sh; point it at the directory conda was installed into (the one holding bin/conda)", ErrEnvMissing, s.Flag)
	}
	return "", fmt.Errorf("%w: no conda installation found (tried %s); install Miniforge, or pass --conda-root DIR / set CONDA_EXE", ErrEnvMissing, strings.Join(cands, ", "))
}

// ResolveEnv returns the prefix of env (a name under ROOT/envs, "base", or an absolute
// prefix) and checks that it has a python.
func ResolveEnv(root, env, backend string) (string, error) {
	var prefix string
	switch {
	case filepath.IsAbs(env):
		prefix = env
	case env == "base":
		prefix = root
	default:
		prefix = filepath.Join(root, "envs", env)
	}
	if !dirExists(prefix) {
		return "", fmt.Errorf("%w: conda env %q not found at %s; create it with `conda env create -f envs/%s.yml` or pass --env NAME|PREFIX", ErrEnvMissing, env, prefix, backend)
	}
	if !fileExists(filepath.Join(prefix, "bin", "python")) {
		return "", fmt.Errorf("%w: conda env %q at %s has no bin/python; recreate it with `conda env create -f envs/%s.yml`", ErrEnvMissing, env, prefix, backend)
	}
	return prefix, nil
}

// ActivationArgv wraps argv so it runs inside the activated env.
func ActivationArgv(root, env string, argv []string) []string {
	out := []string{"bash", "--noprofile", "--norc", "-c", ActivationScript, "moecapd", root, env}
	return append(out, argv...)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// versionProbe prints the installed version of the distribution named by its first
// argument (the name is argv, never part of the code).
const versionProbe = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"

// PackageVersion is the version of the Python distribution dist installed in the env
// (importlib.metadata, run through the same activation as the server and the runner);
// "" when it cannot be told (no env, not installed, no python, or an answer that is not one
// short line).
func PackageVersion(ctx context.Context, root, env, dist string, timeout time.Duration) string {
	out, err := RunInEnv(ctx, root, env, []string{"python", "-c", versionProbe, dist}, timeout)
	if err != nil || out == "" || len(out) > 64 || strings.ContainsAny(out, " \t\n\r") {
		return ""
	}
	return out
}

// RunInEnv runs argv inside the activated env and returns its combined output; doctor uses
// it to check that moe_cap imports and to read backend versions.
func RunInEnv(ctx context.Context, root, env string, argv []string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	full := ActivationArgv(root, env, argv)
	c := exec.CommandContext(ctx, full[0], full[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	out, err := c.CombinedOutput()
	if ctx.Err() == context.DeadlineExceeded {
		return string(out), fmt.Errorf("timed out after %s", timeout)
	}
	return strings.TrimSpace(string(out)), err
}
