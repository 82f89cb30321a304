package app

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// humanEncoder is the console encoder for people: no caller tags, floats rounded to what a
// reader can use (60484.06 → 60484, 0.1200422 → 0.12), durations as 12ms, 4.2s, 1m05s
// instead of nanoseconds. JSON logs (files, machines) keep full precision.
type humanEncoder struct{ zapcore.Encoder }

func NewHumanEncoder() zapcore.Encoder {
	cfg := zap.NewDevelopmentEncoderConfig()
	cfg.CallerKey = zapcore.OmitKey
	cfg.StacktraceKey = zapcore.OmitKey
	cfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05")
	cfg.EncodeDuration = func(d time.Duration, enc zapcore.PrimitiveArrayEncoder) { enc.AppendString(HumanDuration(d)) }
	return humanEncoder{zapcore.NewConsoleEncoder(cfg)}
}

func (h humanEncoder) Clone() zapcore.Encoder { return humanEncoder{h.Encoder.Clone()} }

// AddFloat64 rounds fields added with logger.With.
func (h humanEncoder) AddFloat64(k string, v float64) { h.Encoder.AddFloat64(k, RoundHuman(v)) }

func (h humanEncoder) EncodeEntry(e zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	fs := make([]zapcore.Field, len(fields))
	for i, f := range fields {
		switch f.Type {
		case zapcore.Float64Type:
			f = zap.Float64(f.Key, RoundHuman(math.Float64frombits(uint64(f.Integer))))
		case zapcore.DurationType:
			f = zap.String(f.Key, HumanDuration(time.Duration(f.Integer)))
		}
		fs[i] = f
	}
	return h.Encoder.EncodeEntry(e, fs)
}

// RoundHuman keeps three significant digits, and no decimals from 100 up.
func RoundHuman(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	a := math.Abs(v)
	if a >= 100 {
		return math.Round(v)
	}
	d := 2 - int(math.Floor(math.Log10(a)))
	p := math.Pow(10, float64(d))
	r, _ := strconv.ParseFloat(strconv.FormatFloat(math.Round(v*p)/p, 'f', d, 64), 64)
	return r
}

// HumanDuration: 850µs, 12ms, 4.2s, 1m05s, 2h10m.
func HumanDuration(d time.Duration) string {
	switch a := d.Abs(); {
	case a < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case a < time.Second:
		return d.Round(time.Millisecond).String()
	case a < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case a < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}
