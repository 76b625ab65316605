import jetstan from './index.js'

export const { version, connect, StartPosition, StanError } = jetstan
export default jetstan
