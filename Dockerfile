# keyledger's production image: a static binary on a minimal base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags="-s -w" -o /out/keyledger ./cmd/keyledger \
    && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyledger /usr/local/bin/keyledger
# A named volume mounted on /data takes this directory's owner.
COPY --from=build --chown=65532:65532 /out/data /data
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyledger"]
CMD ["serve"]
