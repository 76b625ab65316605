'use strict'

// `npm run dist [-- --out DIR]`: the tarballs a registry would get, into dist/
// (or DIR): jetstan-<version>.tgz, which carries the JS, the types and the
// Rust sources but no binary, and jetstan-<platform>-<version>.tgz with the
// binary built here. As `napi prepublish` does, the main package lists every
// platform package as an optional dependency, so npm installs the one whose
// os, cpu and libc match. Prints one JSON line: the files and their sizes.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { ensureNpm, ensureBuild, ROOT } = require('./ensure')

function npmPack (dir, out) {
  const res = spawnSync('npm', ['pack', '--json', '--pack-destination', out], { cwd: dir, encoding: 'utf8' })
  if (res.status !== 0) throw new Error(`npm pack in ${dir} failed: ${res.stderr}`)
  const [info] = JSON.parse(res.stdout)
  return { file: path.join(out, info.filename), size: info.size, unpackedSize: info.unpackedSize, files: info.files.map((f) => f.path) }
}

function stage (dir, files, from) {
  fs.rmSync(dir, { recursive: true, force: true })
  for (const file of files) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true })
    fs.copyFileSync(path.join(from, file), path.join(dir, file))
  }
}

function main () {
  const at = process.argv.indexOf('--out')
  const out = path.resolve(at > 0 ? process.argv[at + 1] : path.join(ROOT, 'dist'))
  fs.mkdirSync(out, { recursive: true })
  ensureNpm(ROOT)
  ensureBuild()
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
  const staging = path.join(ROOT, '.tmp', 'dist')

  // The platform package of this machine: npm/<platform>/ and the binary.
  const binaries = fs.readdirSync(ROOT).filter((f) => /^jetstan\..+\.node$/.test(f))
  if (binaries.length !== 1) throw new Error(`expected one built jetstan.<platform>.node, found ${binaries.join(', ') || 'none'}`)
  const platform = binaries[0].slice('jetstan.'.length, -'.node'.length)
  const platformDir = path.join(staging, platform)
  stage(platformDir, ['package.json', 'README.md'], path.join(ROOT, 'npm', platform))
  fs.copyFileSync(path.join(ROOT, binaries[0]), path.join(platformDir, binaries[0]))
  fs.copyFileSync(path.join(ROOT, 'LICENSE'), path.join(platformDir, 'LICENSE'))

  // The main package: what `files` selects, with the optional dependencies
  // added and only the install script kept.
  const listed = spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd: ROOT, encoding: 'utf8' })
  if (listed.status !== 0) throw new Error(`npm pack --dry-run failed: ${listed.stderr}`)
  const mainDir = path.join(staging, 'jetstan')
  stage(mainDir, JSON.parse(listed.stdout)[0].files.map((f) => f.path), ROOT)
  const platforms = fs.readdirSync(path.join(ROOT, 'npm')).sort()
  pkg.optionalDependencies = Object.fromEntries(platforms.map((p) => [`jetstan-${p}`, pkg.version]))
  pkg.scripts = { install: pkg.scripts.install }
  delete pkg.devDependencies
  fs.writeFileSync(path.join(mainDir, 'package.json'), JSON.stringify(pkg, null, 2) + '\n')

  const packed = { main: npmPack(mainDir, out), platform: npmPack(platformDir, out) }
  fs.rmSync(staging, { recursive: true, force: true })
  console.log(JSON.stringify({
    main: { file: packed.main.file, bytes: packed.main.size, unpackedBytes: packed.main.unpackedSize },
    platform: { name: `jetstan-${platform}`, file: packed.platform.file, bytes: packed.platform.size, binaryBytes: fs.statSync(path.join(ROOT, binaries[0])).size }
  }))
}

main()
