import jetstan from './index.js'

export const { version, connect, StartPosition, connectAsync, Publisher, Listener, createBus, jsonCodec, taggedJsonCodec, StanError, migrate, jetstreamNames } = jetstan
export default jetstan
