package mqtt

import (
	"testing"

	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/drivertest"
)

// TestConformance runs the drivers' suite through a real broker, with
// simulated devices speaking docs/mqtt.md.
func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) drivertest.Setup {
		b := newBroker(t)
		app := driver.App{ID: 1, UUID: newUUID(), Name: "sensors", HostType: "esp32"}
		drv, err := New(map[string]string{"broker": b.url, "chunk_size": "4096"})
		if err != nil {
			t.Fatal(err)
		}
		return drivertest.Setup{Driver: drv, Peer: newPeer(t, b, DefaultPrefix, app.UUID), App: app}
	})
}
