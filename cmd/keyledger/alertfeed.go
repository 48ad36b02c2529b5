package main

import (
	"context"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// alertFeed tails the ALERTS stream for the API's alert stream.
type alertFeed struct{ store *eventstore.Store }

func (f alertFeed) TailAlerts(ctx context.Context, fn func(domain.Envelope) error) error {
	last, err := f.store.LastSeq(ctx, domain.StreamAlerts)
	if err != nil {
		return err
	}
	sub, err := f.store.Subscribe(ctx, domain.StreamAlerts, last+1, fn)
	if err != nil {
		return err
	}
	<-sub.Done()
	return sub.Err()
}
