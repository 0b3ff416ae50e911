import numpy as np, sys
from fastbp._kernels import reference as ref
import importlib
be = importlib.import_module("fastbp._kernels." + sys.argv[1])
rng=np.random.default_rng(0)
def run(mod, kind, B,T,I,H, dtype, trunc, nt):
    r=np.random.default_rng(1)
    x=r.standard_normal((B,T,I)).astype(dtype); h0=r.standard_normal((B,H)).astype(dtype); c0=r.standard_normal((B,H)).astype(dtype); g=r.standard_normal((B,T,H)).astype(dtype)
    G=4 if kind=="lstm" else 3
    wih=(r.standard_normal((I,G*H))/np.sqrt(I)).astype(dtype); whh=(r.standard_normal((H,G*H))/np.sqrt(H)).astype(dtype); b=r.standard_normal(G*H).astype(dtype); bhn=r.standard_normal(H).astype(dtype)
    E=lambda *s: np.full(s, np.nan, dtype)
    hs=E(B,T,H); gates=E(B,T,G*H); dg=E(B,T,G*H); dx=E(B,T,I); dwih=E(I,G*H); dwhh=E(H,G*H); dh0=E(B,H); db=E(G*H)
    if kind=="lstm":
        cs=E(B,T,H); dc0=E(B,H)
        mod.lstm_forward(x,wih,whh,b,h0,c0,hs,cs,gates,E(4*B*H),nt)
        mod.lstm_backward(x,wih,whh,h0,c0,hs,cs,gates,g,trunc,dg,dx,dwih,dwhh,db,dh0,dc0,E(7*B*H),nt)
        return [hs,cs,gates,dg,dx,dwih,dwhh,db,dh0,dc0]
    hn=E(B,T,H); dghh=E(B,T,3*H); dbhn=E(H)
    mod.gru_forward(x,wih,whh,b,bhn,h0,hs,gates,hn,E(3*B*H),nt)
    mod.gru_backward(x,wih,whh,h0,hs,gates,hn,g,trunc,dg,dghh,dx,dwih,dwhh,db,dbhn,dh0,E(5*B*H),nt)
    return [hs,gates,hn,dg,dghh,dx,dwih,dwhh,db,dbhn,dh0]
for kind in ("lstm","gru"):
  for shape in [(1,1,1,1),(3,7,5,6),(2,50,3,17),(5,2,4,33)]:
    for dt in (np.float64,np.float32):
      for tr in sorted({shape[1], max(1,shape[1]//2), 1}):
        a=run(ref,kind,*shape,dt,tr,1); b1=run(be,kind,*shape,dt,tr,1); b2=run(be,kind,*shape,dt,tr,2)
        errs=[float(np.max(np.abs(u-v))/(np.max(np.abs(u))+1e-30)) for u,v in zip(a,b1)]
        bit=all(np.array_equal(u,v) for u,v in zip(b1,b2))
        print(kind,shape,np.dtype(dt).name,tr,"maxrel %.2e"%max(errs), "bitwise12", bit)
