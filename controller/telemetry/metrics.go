package telemetry

import "github.com/prometheus/client_golang/prometheus"

var (
	seriesDesc  = prometheus.NewDesc("detour_telemetry_series", "Series the controller's collector holds (one per reporting pod, direction, authority, endpoint and peer identity).", nil, nil)
	maxDesc     = prometheus.NewDesc("detour_telemetry_series_limit", "Most series the collector holds; past it new series are dropped.", nil, nil)
	proxiesDesc = prometheus.NewDesc("detour_telemetry_proxies", "Proxies that reported within the window.", nil, nil)
	droppedDesc = prometheus.NewDesc("detour_telemetry_series_dropped_total", "Route summaries dropped because the collector held its limit of series.", nil, nil)
	reportsDesc = prometheus.NewDesc("detour_telemetry_reports_total", "Reports received from proxies.", nil, nil)
)

// Collector exposes the store's own figures as Prometheus metrics.
func (s *Store) Collector() prometheus.Collector { return storeCollector{s} }

type storeCollector struct{ s *Store }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{seriesDesc, maxDesc, proxiesDesc, droppedDesc, reportsDesc} {
		ch <- d
	}
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(seriesDesc, prometheus.GaugeValue, float64(st.Series))
	ch <- prometheus.MustNewConstMetric(maxDesc, prometheus.GaugeValue, float64(c.s.maxSeries))
	ch <- prometheus.MustNewConstMetric(proxiesDesc, prometheus.GaugeValue, float64(st.Proxies))
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(reportsDesc, prometheus.CounterValue, float64(st.Reports))
}
