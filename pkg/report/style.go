package report

import (
	"fmt"
	"hash/fnv"
	"image/color"
	"math"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Sans text in every figure: gonum's default is Liberation Serif. plotter copies the
// default at its own init, so both are set.
func init() {
	sans := font.Font{Typeface: "Liberation", Variant: "Sans"}
	plot.DefaultFont = sans
	plotter.DefaultFont = sans
}

func rgb(hex uint32) color.RGBA {
	return color.RGBA{R: uint8(hex >> 16), G: uint8(hex >> 8), B: uint8(hex), A: 255}
}

// hardwareColors is the fixed palette of the hardware labels of the guide's matrix: one
// hue per GPU family (H100 blue, H200 green, A100 orange), darker for 8 GPUs. The same
// label has the same colour in every report, whatever else the report holds.
var hardwareColors = map[string]color.RGBA{
	"1xH100": rgb(0x4c8fd6), "2xH100": rgb(0x2f6db5), "4xH100": rgb(0x1f5796), "8xH100": rgb(0x0d3566),
	"1xH200": rgb(0x3fae6a), "2xH200": rgb(0x2a8f52), "4xH200": rgb(0x1d7341), "8xH200": rgb(0x0f4a28),
	"1xA100": rgb(0xf0a03c), "2xA100": rgb(0xd9822a), "4xA100": rgb(0xb8661c), "8xA100": rgb(0x8a4510),
}

// otherColors serve labels outside the table, chosen by a hash of the label so they too
// stay the same from one report to the next.
var otherColors = []color.RGBA{rgb(0x9467bd), rgb(0x8c564b), rgb(0xe377c2), rgb(0x7f7f7f),
	rgb(0xbcbd22), rgb(0x17becf), rgb(0xd62728), rgb(0x393b79)}

// HardwareColor is the colour of a hardware label in every figure.
func HardwareColor(label string) color.RGBA {
	if c, ok := hardwareColors[label]; ok {
		return c
	}
	h := fnv.New32a()
	h.Write([]byte(label))
	return otherColors[h.Sum32()%uint32(len(otherColors))]
}

// backendStyle is how a backend is told apart within one hardware colour: marker shape
// and line dashes, fixed per backend name.
type backendStyle struct {
	shape  draw.GlyphDrawer
	dashes []vg.Length
}

func styleOfBackend(b string) backendStyle {
	switch b {
	case "sglang":
		return backendStyle{shape: draw.CircleGlyph{}}
	case "vllm":
		return backendStyle{shape: draw.TriangleGlyph{}, dashes: []vg.Length{vg.Points(6), vg.Points(3)}}
	case "sim":
		return backendStyle{shape: draw.BoxGlyph{}}
	default:
		return backendStyle{shape: draw.PyramidGlyph{}, dashes: []vg.Length{vg.Points(2), vg.Points(2)}}
	}
}

// floorDashes draw physical floors: dotted, thinner than measured lines.
var floorDashes = []vg.Length{vg.Points(1.5), vg.Points(2.5)}

// DisplayName is a model's name for people ("Qwen1.5-MoE"), from names, else the key.
func DisplayName(names map[string]string, key string) string {
	if n := names[key]; n != "" {
		return n
	}
	return key
}

// GiB is bytes in binary gigabytes, the unit GPU names use: an "80GB" A100 has 80 GiB.
func GiB(b float64) float64 { return b / (1 << 30) }

// showGiB formats bytes as GiB for people.
func showGiB(b float64) string { return fmt.Sprintf("%.1f GiB", GiB(b)) }

// round3 rounds to three significant digits for people: 16.2, 0.127, 1,230 → "1230".
func round3(v float64) string {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return thousands(math.Round(v))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		d := int(math.Ceil(-math.Log10(a))) + 2
		return strconv.FormatFloat(v, 'f', min(d, 9), 64)
	}
}

// thousands writes an integer with comma separators: 12,345.
func thousands(v float64) string {
	s := strconv.FormatFloat(math.Abs(v), 'f', 0, 64)
	var b strings.Builder
	if v < 0 {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString(",")
		}
		b.WriteRune(c)
	}
	return b.String()
}

// human formats a duration for people: 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min.
func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
	default:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%d h %02d min", int(d.Hours()), int(d.Minutes())%60)
	}
}
