package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/keyledger/keyledger/api/client"
)

// Put RequireKey in front of the handlers a key protects. In production
// the verifier is a *client.Client (one POST /v1/verify per request) or a
// *replica.Replica (in-process); here a stand-in answers.
func ExampleRequireKey() {
	verifier := client.VerifierFunc(func(_ context.Context, req client.VerifyRequest) (client.Verification, error) {
		if req.Token == "klk_good" {
			return client.Verification{Valid: true, Code: "VALID", KeyID: "0197a5b2-6c1e-7d3a-9f2b-4c8d1e2f3a4b"}, nil
		}
		return client.Verification{Code: "REVOKED"}, nil
	})
	orders := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, _ := client.FromContext(r.Context())
		fmt.Fprintln(w, "orders for key", v.KeyID)
	})
	h := client.RequireKey(verifier, "orders.read")(orders)

	for _, tok := range []string{"klk_good", "klk_revoked"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/orders", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		h.ServeHTTP(rec, req)
		fmt.Print(rec.Code, " ", rec.Body.String())
	}
	// Output:
	// 200 orders for key 0197a5b2-6c1e-7d3a-9f2b-4c8d1e2f3a4b
	// 401 {"code":"token_revoked","detail":"key rejected: REVOKED","instance":"/orders","status":401,"title":"Unauthorized","type":"https://keyledger.dev/problems/token_revoked"}
}

// Errors from the server carry its stable code: switch on it.
func ExampleError() {
	err := fmt.Errorf("revoke: %w", client.ProblemError(409, "application/problem+json",
		[]byte(`{"code":"key_revoked","detail":"key is already revoked","status":409}`)))
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Code)
	}
	fmt.Println(client.ErrorCode(err) == "key_revoked")
	// Output:
	// 409 key_revoked
	// true
}
