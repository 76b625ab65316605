// Where the example services find NATS: NATS_URL, as every jetstan script honours.
export const natsUrl = process.env.NATS_URL ?? 'nats://localhost:4222'
export const clusterId = 'ticketing'
