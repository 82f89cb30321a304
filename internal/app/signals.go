package app

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// InterruptSignals end a run with teardown: SIGINT (Ctrl-C), SIGTERM (kill, systemd,
// Slurm's time limit) and SIGHUP (the ssh session or terminal went away). Each tears the
// server down, records the cell interrupted with the phase it was in, and exits 130.
var InterruptSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// SignalContext returns a context cancelled by the first of InterruptSignals. Later signals
// are logged and ignored: teardown is bounded (grace, then SIGKILL) and runs to its end;
// only SIGKILL skips it, and then the next run's orphan sweep ends the server. SIGPIPE is
// caught too, so a write to a stdout or stderr whose reader is gone (the terminal or a
// `| tee` that died with the ssh session) returns an error instead of killing moecapd
// before it tears down. Caught signals are reset to default in the children we exec.
func SignalContext(log *zap.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, InterruptSignals...)
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	done := make(chan struct{})
	go func() {
		first := true
		for {
			select {
			case s := <-sigs:
				if first {
					first = false
					log.Warn("signal received: tearing the server down, then exiting 130 (further signals are ignored until teardown ends)",
						zap.String("signal", s.String()))
					cancel(fmt.Errorf("%s (%s)", unix.SignalName(s.(syscall.Signal)), s))
				} else {
					log.Warn("signal ignored: teardown in progress (it is bounded by --grace, then SIGKILL)", zap.String("signal", s.String()))
				}
			case <-pipe:
			case <-done:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		signal.Stop(pipe)
		close(done)
		cancel(nil)
	}
}

// BecomeSubreaper makes moecapd the child subreaper of what it starts and logs which
// mechanism finds a server's processes (manifest.json records it as server.tracking).
func BecomeSubreaper(log *zap.Logger) {
	if err := launcher.BecomeSubreaper(); err != nil {
		log.Warn("cannot become a child subreaper; double-forked server workers are still found by their environment token",
			zap.Error(err), zap.String("tracking", launcher.Tracking()))
		return
	}
	log.Debug("process tracking", zap.String("tracking", launcher.Tracking()))
}

// exposed reports whether a listen address (a host, or host:port) reaches beyond this
// machine: anything but a loopback address or "localhost".
func exposed(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}
