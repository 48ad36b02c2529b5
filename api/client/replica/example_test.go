package replica_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/api/client/replica"
	"github.com/keyledger/keyledger/eventstore"
)

// A service verifies in-process from its replica: it connects with the
// verifier's credentials, trusts the nodes' writers and records every
// verification on USAGE (durably: the answer waits for the group commit).
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := replica.Open(ctx, replica.Config{
		NATS: eventstore.Config{
			URL:          "nats://keyledger.internal:4222",
			NkeySeedFile: "/etc/keyledger/verifier.nk",
		},
		WritersFile: "/etc/keyledger/trusted-writers.json",
		Service:     "orders-api",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close(context.Background())
	http.Handle("GET /orders", client.RequireKey(r, "orders.read")(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		v, _ := client.FromContext(req.Context())
		w.Write([]byte("orders of " + v.Owner))
	})))
}
