import type { StanOptions } from 'jetstan'

// Where the example services find NATS: NATS_URL, as every jetstan script honours.
export const natsUrl = process.env.NATS_URL ?? 'nats://localhost:4222'
export const clusterId = process.env.STAN_CLUSTER_ID ?? 'ticketing'

// JETSTAN_BACKEND=stan runs the same services on a nats-streaming-server.
const backend: StanOptions['backend'] = process.env.JETSTAN_BACKEND === 'stan' ? 'stan' : 'jetstream'

export const connectOptions: StanOptions = { url: natsUrl, backend }
