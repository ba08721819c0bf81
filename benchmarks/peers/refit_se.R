# Standard errors of a two-expert mixture from flexmix's refit(); used by
# bench_se_flexmix.py. Usage: Rscript refit_se.R DATA.csv OUT.csv
# Model: y ~ x1 + x2 + x3 per component (sigma each), gate FLXPmultinom(~ x1 + x2
# + x3); best of 3 EM runs (stepFlexmix). refit() maximises the same likelihood
# with optim and inverts its Hessian: OUT.csv lists every parameter's name,
# estimate and standard error (regressions, log(sigma), concomitant).
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
set.seed(1)
fit <- stepFlexmix(y ~ x1 + x2 + x3, data = d, k = 2, nrep = 3,
  model = FLXMRglm(), concomitant = FLXPmultinom(~ x1 + x2 + x3), verbose = FALSE)
r <- refit(fit)
out <- data.frame(name = names(r@coef), estimate = unname(r@coef),
                  se = sqrt(diag(r@vcov)))
write.csv(out, args[2], row.names = FALSE)
