# Draws docs/architecture.svg: the data flow of one run. Regenerate with
#   python3 scripts/architecture-svg.py > docs/architecture.svg
boxes = {
 # name: (x, y, w, h, title, subtitle, fill)
 'cli':    (40, 20, 300, 54, 'CLI (src/cli/)  ·  library API', 'flags → RunSpec  ·  Runtime::run(spec)', '#eef3fb'),
 'runner': (40, 110, 300, 54, 'runner/', 'queue · image rules · scratch · events · audit', '#eef3fb'),
 'store':  (420, 110, 300, 54, 'store/  (cache, refs, locks, gc)', 'lookup, else pull → verified entry', '#f3f8ec'),
 'reg':    (420, 200, 140, 54, 'registry/', 'auth · manifest · blobs', '#f3f8ec'),
 'unpack': (580, 200, 140, 54, 'unpack/', 'tar → rootfs, fd-relative', '#f3f8ec'),
 'plan':   (40, 200, 300, 54, 'sandbox/plan.rs  (parent)', 'ids · mounts · seccomp BPF · caps · cgroup', '#fbf3e8'),
 'spawn':  (40, 290, 300, 54, 'sandbox/spawn.rs  (parent)', 'clone · id maps · cgroup · wait · clean up', '#fbf3e8'),
 'child':  (40, 380, 300, 54, 'sandbox/child.rs  (child)', 'mounts · pivot_root · hostname · net', '#fbece8'),
 'init':   (40, 470, 300, 54, 'sandbox/init.rs  (pid 1)', 'caps · no_new_privs · seccomp · exec', '#fbece8'),
 'tool':   (40, 560, 300, 44, 'the tool', '', '#f0f0f0'),
 'helper': (420, 290, 300, 54, 'runner/helper.rs', 'multithreaded callers: nsrun in helper mode', '#eef3fb'),
}
# Each arrow: points of its polyline, its label and where the label goes.
arrows = [
    ([(190, 74), (190, 110)], 'RunSpec', (198, 96)),
    ([(340, 128), (420, 128)], 'image ref', (348, 122)),
    ([(530, 164), (490, 200)], '', None),
    ([(610, 164), (650, 200)], '', None),
    ([(190, 164), (190, 200)], 'SandboxSpec + rootfs', (198, 186)),
    ([(190, 254), (190, 290)], 'Plan', (198, 276)),
    ([(190, 344), (190, 380)], 'clone', (198, 366)),
    ([(190, 434), (190, 470)], 'setup done', (198, 456)),
    ([(190, 524), (190, 560)], 'execve', (198, 546)),
    ([(340, 150), (390, 150), (390, 305), (420, 305)], '', None),
    ([(420, 330), (340, 330)], '', None),
]
out = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="630" font-family="sans-serif" font-size="13">',
       '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#444"/></marker></defs>',
       '<rect width="100%" height="100%" fill="white"/>']
for n,(x,y,w,h,t,s,f) in boxes.items():
    out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{f}" stroke="#555"/>')
    ty = y + (20 if s else h/2+5)
    out.append(f'<text x="{x+w/2}" y="{ty}" text-anchor="middle" font-weight="bold">{t}</text>')
    if s: out.append(f'<text x="{x+w/2}" y="{y+40}" text-anchor="middle" fill="#333" font-size="12">{s}</text>')
for pts, label, at in arrows:
    d = ' '.join(f'{x},{y}' for x, y in pts)
    out.append(f'<polyline points="{d}" fill="none" stroke="#444" stroke-width="1.5" marker-end="url(#a)"/>')
    if label:
        out.append(f'<text x="{at[0]}" y="{at[1]}" fill="#225" font-size="12">{label}</text>')
out.append('<text x="430" y="364" fill="#225" font-size="12">helper: spec as JSON on fd 3, same spawn</text>')
out.append('</svg>')
print('\n'.join(out))
