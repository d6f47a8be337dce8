"""File-level import circles in src/: prints each group of files that import each other
(directly or around a loop), nothing when there is none. Run from the repository root:
`python3 tools/import_cycles.py`. Reads `use crate::`, `use super::` and `self::` paths
(test modules left out), resolves them to files, and finds the strongly connected groups."""
import os,re,sys
root='src'
files={}
for d,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(d,f)
            mod=p[len(root)+1:-3]
            parts=mod.split('/')
            if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
            files['::'.join(parts)]=p
def resolve(cur, path):
    # cur: module path list; path: list of segments
    segs=list(path)
    if segs[0]=='crate': base=[]; segs=segs[1:]
    elif segs[0]=='super':
        base=cur[:-1]; segs=segs[1:]
        while segs and segs[0]=='super': base=base[:-1]; segs=segs[1:]
    elif segs[0]=='self': base=cur; segs=segs[1:]
    else: return None
    # longest prefix that is a file module
    best=None
    for i in range(len(segs),-1,-1):
        m='::'.join(base+segs[:i])
        if m in files: best=m; break
    return best
edges={m:set() for m in files}
for m,p in files.items():
    cur=m.split('::') if m else []
    # module file that is mod.rs: its children are cur+[x]; super refers to parent
    is_mod=p.endswith('mod.rs') or p.endswith('lib.rs')
    curmod=cur if not is_mod else cur+['_']
    src=open(p).read()
    src=src.split('#[cfg(test)]')[0]
    for mm in re.finditer(r'\b((?:crate|super|self)(?:::\w+)*)(?:::\{([^}]*)\})?', src):
        segs=mm.group(1).split('::')
        targets=[segs]
        if mm.group(2):
            targets=[segs+[x.strip().split('::')[0].split(' ')[0]] for x in mm.group(2).split(',') if x.strip()]
        for t in targets:
            r=resolve(curmod,t)
            if r is not None and r!=m and not m.startswith(r+'::') and r!='' :
                edges[m].add(r)
# remove edges parent mod -> child (mod.rs declaring children) 
# tarjan
sys.setrecursionlimit(10000)
idx={};low={};st=[];on=set();sccs=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w); low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
for v in edges:
    if v not in idx: sc(v)
for s in sccs: print(sorted(s))
