package capmath

// Prices are the cost inputs per GPU: the hardware table's (configs/hardware.yaml), or
// --gpu-hour-usd / --electricity-usd-per-kwh.
type Prices struct {
	GPUHourUSD           float64 `json:"gpu_hour_usd"`
	ElectricityUSDPerKWh float64 `json:"electricity_usd_per_kwh"`
	// Source is "hardware table" or "flags".
	Source string `json:"source,omitempty"`
}

// The cost windows, each named with the clock that measured it.
const (
	WindowTelemetry  = "GPU sampler bench window (moecapd's telemetry clock, NVML)"
	WindowClient     = "client request window (the native client's clock)"
	WindowBenchPhase = "bench phase (moecapd's clock around the client process)"
)

// CostInputs is the one set of inputs of the one cost computation.
type CostInputs struct {
	GPUs int
	// WindowS is the priced window, Window its name and clock (WindowTelemetry,
	// WindowClient or WindowBenchPhase).
	WindowS float64
	Window  string
	// EnergyJ is the measured energy of the GPUs over the window (nil: not measured).
	EnergyJ      *float64
	EnergySource string // "counter" or "power"
	OutputTokens int
	Prices       Prices
}

// Cost is what a cell's bench cost: GPU rental for the window plus the electricity the
// GPUs drew in it (manifest extra.cap.cost).
type Cost struct {
	Prices       Prices   `json:"prices"`
	GPUs         int      `json:"gpus"`
	WindowS      float64  `json:"window_s"`
	Window       string   `json:"window"`
	EnergyJ      *float64 `json:"energy_j,omitempty"`
	EnergySource string   `json:"energy_source,omitempty"`
	OutputTokens int      `json:"output_tokens"`
	// RentalUSD = GPUs × gpu_hour_usd × window / 3600.
	RentalUSD float64 `json:"rental_usd"`
	// ElectricityUSD = energy / 3.6e6 × usd_per_kwh; nil when no energy was measured.
	ElectricityUSD *float64 `json:"electricity_usd,omitempty"`
	// TotalUSD is rental + electricity; nil when electricity is priced but was not
	// measured (a total without it would understate the cost).
	TotalUSD *float64 `json:"total_usd,omitempty"`
	// PerMillionOutputTokensUSD = TotalUSD / output tokens × 1e6; RentalPerMillion… the
	// rental part alone (always there when the window is).
	PerMillionOutputTokensUSD       *float64 `json:"per_million_output_tokens_usd,omitempty"`
	RentalPerMillionOutputTokensUSD *float64 `json:"rental_per_million_output_tokens_usd,omitempty"`
}

// ComputeCost is moecapd's only cost computation. nil when there is no window or GPU.
func ComputeCost(in CostInputs) *Cost {
	if in.WindowS <= 0 || in.GPUs <= 0 {
		return nil
	}
	c := &Cost{Prices: in.Prices, GPUs: in.GPUs, WindowS: in.WindowS, Window: in.Window,
		EnergyJ: in.EnergyJ, EnergySource: in.EnergySource, OutputTokens: in.OutputTokens}
	c.RentalUSD = float64(in.GPUs) * in.Prices.GPUHourUSD * in.WindowS / 3600
	total := c.RentalUSD
	switch {
	case in.EnergyJ != nil:
		e := *in.EnergyJ / 3.6e6 * in.Prices.ElectricityUSDPerKWh
		c.ElectricityUSD = &e
		total += e
		c.TotalUSD = &total
	case in.Prices.ElectricityUSDPerKWh == 0:
		c.TotalUSD = &total
	}
	if in.OutputTokens > 0 {
		c.RentalPerMillionOutputTokensUSD = ptr(c.RentalUSD / float64(in.OutputTokens) * 1e6)
		if c.TotalUSD != nil {
			c.PerMillionOutputTokensUSD = ptr(*c.TotalUSD / float64(in.OutputTokens) * 1e6)
		}
	}
	return c
}
