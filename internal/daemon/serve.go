package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/nodelock"
)

// ServeRequest is moecapd serve: the pipeline's settings for every cell (Matrix: the
// results root, retries, cell timeout, slots, launch-and-bench's flags) and the API's.
type ServeRequest struct {
	Matrix       app.MatrixOptions
	Listen       []string // unix:PATH or HOST:PORT; none: the default socket
	TokensFile   string
	Admins       []string
	TLSCert      string
	TLSKey       string
	DrainTimeout time.Duration
	Webhook      string
	// Slurm, when set, runs the jobs on a Slurm cluster (--executor slurm): no node lock,
	// the cluster owns the GPUs.
	Slurm *SlurmOptions
	Log   *zap.Logger
}

// Serve runs the daemon until SIGTERM/SIGINT (then drains) and reloads tokens on SIGHUP.
func Serve(req ServeRequest) error {
	log := req.Log
	if req.Matrix.ResultsFlag == "" {
		return exitcode.Usagef("--results: give the results root the daemon owns")
	}
	results, err := filepath.Abs(req.Matrix.ResultsFlag)
	if err != nil {
		return err
	}
	req.Matrix.ResultsFlag = results
	if len(req.Listen) == 0 {
		req.Listen = []string{"unix:" + nodelock.DefaultSocket()}
	}
	var ls []Listen
	for _, s := range req.Listen {
		l, err := ParseListen(s)
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		ls = append(ls, l)
	}
	var toks *Tokens
	if req.TokensFile != "" {
		if toks, err = LoadTokens(req.TokensFile); err != nil {
			return exitcode.Usagef("--tokens: %v", err)
		}
	}
	for _, l := range ls {
		if l.Unix == "" && !l.Loopback() && toks == nil {
			return exitcode.Usagef("--listen %s is reachable from other machines and no --tokens file is given: anyone could submit and cancel; give --tokens FILE (lines \"TOKEN USER\", mode 0600) or listen on loopback or a unix socket", l.Addr)
		}
	}
	if (req.TLSCert == "") != (req.TLSKey == "") {
		return exitcode.Usagef("--tls-cert and --tls-key go together")
	}
	var tlsCfg *tls.Config
	if req.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(req.TLSCert, req.TLSKey)
		if err != nil {
			return exitcode.Usagef("--tls-cert/--tls-key: %v", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if req.Slurm == nil {
		// The node's GPUs are this daemon's; on Slurm they are the cluster's.
		host, _ := os.Hostname()
		lock, err := nodelock.Acquire(nodelock.Info{PID: os.Getpid(), Host: host, Results: results, Listen: req.Listen, StartedAt: time.Now().UTC()})
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		defer lock.Release()
		app.BecomeSubreaper(log)
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	d, err := New(ctx, Options{Matrix: req.Matrix, Log: log, Webhook: req.Webhook, Slurm: req.Slurm})
	if err != nil {
		return err
	}
	defer d.Close()
	log.Info("daemon reconciled", zap.String("results", results), zap.Bool("slurm", req.Slurm != nil), zap.Duration("took", d.reconciled),
		zap.Strings("gpus", d.pool), zap.Int("slots", d.slots), zap.Int("jobs", len(d.jobs)))
	admins := map[string]bool{}
	for _, a := range req.Admins {
		admins[a] = true
	}
	srv := &Server{D: d, Log: log, Tokens: toks, Admins: admins, Start: time.Now().UTC()}
	apiCtx, apiStop := context.WithCancel(context.Background())
	defer apiStop()
	apiErr := make(chan error, 1)
	go func() { apiErr <- srv.Serve(apiCtx, ls, tlsCfg) }()
	runCtx, runStop := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { d.Run(runCtx, req.DrainTimeout); close(runDone) }()

	_, _ = sd.SdNotify(false, sd.SdNotifyReady)
	var wd <-chan time.Time
	if iv, err := sd.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		wd = t.C
	}
	var serveErr error
loop:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				if toks == nil {
					log.Info("SIGHUP: no --tokens file to reload")
				} else if err := toks.Reload(); err != nil {
					log.Error("SIGHUP: tokens not reloaded; the old ones stay", zap.Error(err))
				} else {
					log.Info("SIGHUP: tokens reloaded", zap.String("file", req.TokensFile))
				}
				continue
			}
			log.Info("signal: draining", zap.String("signal", s.String()))
			break loop
		case err := <-apiErr:
			serveErr = err
			break loop
		case <-wd:
			_, _ = sd.SdNotify(false, sd.SdNotifyWatchdog)
		}
	}
	_, _ = sd.SdNotify(false, sd.SdNotifyStopping)
	runStop()
	// The API stays up while draining, so clients see the cells finish.
	go func() {
		for range sigs {
			log.Warn("signal during drain: the drain goes on until --drain-timeout")
		}
	}()
	<-runDone
	apiStop()
	if serveErr != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("the API stopped: %w", serveErr))
	}
	if err := <-apiErr; err != nil && !errors.Is(err, context.Canceled) {
		return exitcode.New(exitcode.Usage, err)
	}
	log.Info("daemon stopped; the queue is kept for the next start")
	return nil
}
